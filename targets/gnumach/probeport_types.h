/*
 * probeport_types.h: C types of probeport.defs and probeport_notify.defs.
 *
 * Copyright (C) 2026 The probeport authors.
 * SPDX-License-Identifier: GPL-2.0-or-later OR MIT
 */

#ifndef _MACH_PROBEPORT_TYPES_H_
#define _MACH_PROBEPORT_TYPES_H_

/* Largest message of the protocol (PROTOCOL.md section 2.3).  */
#define PROBEPORT_MAX_MESSAGE	40960
/* Largest reply or event carried inline by the kernel (its reply buffer is
   8 KiB, headers included).  */
#define PROBEPORT_MAX_INLINE	7680

/* One protocol message, as a byte array of variable length.  */
typedef char *probeport_request_t;
typedef const char *const_probeport_request_t;
typedef char *probeport_reply_t;
typedef const char *const_probeport_reply_t;
typedef char *probeport_event_t;
typedef const char *const_probeport_event_t;

#endif /* _MACH_PROBEPORT_TYPES_H_ */
