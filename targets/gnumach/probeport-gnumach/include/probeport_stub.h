/* The probeport stub's C interface, for GNU Mach.

   Copyright (C) 2026 The probeport authors.
   SPDX-License-Identifier: MIT OR Apache-2.0

   Two halves.  The probeport_stub_* functions are defined by the Rust archive
   libprobeport_gnumach.a; the probeport_md_* functions are the platform, defined
   by the kernel's glue (GNU Mach: kern/probeport_md.c).  Functions marked
   "probe context" run from the breakpoint trap with interrupts masked: they must
   not block, allocate, print, send a message or take a lock the CPU may hold.  */

#ifndef _PROBEPORT_STUB_H_
#define _PROBEPORT_STUB_H_

#include <stddef.h>
#include <stdint.h>

/* Registers at a breakpoint, in DWARF order:
   rax rdx rcx rbx rsi rdi rbp rsp r8 ... r15.  pc is past the int3.  */
struct probeport_trap_regs {
	uint64_t regs[16];
	uint64_t pc;
	uint64_t flags;
};

/* A static marker (kern/probeport_marker.h declares them): its name
   ("subsystem:event"), its arguments ("name:type ...", types u8 u16 u32 u64
   i8 i16 i32 i64 bool pointer string, at most 8), and the byte a disabled
   marker reads, set by the stub while a probe uses the marker.  The kernel
   gathers its sites into one table (probeport_md_markers).  */
struct probeport_marker {
	const char *name;
	const char *args;
	volatile unsigned char enabled;
};

/* Output kinds passed to a probeport_out_t.  */
#define PROBEPORT_OUT_REPLY	0	/* the reply to the request being handled */
#define PROBEPORT_OUT_EVENT	1	/* an event or loss report (unsolicited) */
#define PROBEPORT_OUT_BYTES	2	/* framed bytes for a byte stream */

/* Receives one message (or, for PROBEPORT_OUT_BYTES, some frame bytes).  It
   must not call back into the stub.  */
typedef void (*probeport_out_t)(void *cookie, const unsigned char *bytes,
				size_t length, int kind);

/*
 * The stub (Rust).
 */

/* Records the forbidden text and reads the marker table.  Once, on the boot
   CPU, before the trap hook.  */
extern void probeport_stub_init(void);

/* #BP in kernel mode (probe context).  Returns 1 if the stub handled the trap
   and REGS say where to resume, 0 if the breakpoint is not the stub's.  */
extern int probeport_stub_breakpoint(struct probeport_trap_regs *regs);

/* The timer interrupt (probe context): runs due timer probes.  */
extern void probeport_stub_timer(const struct probeport_trap_regs *regs);

/* An enabled marker fired with COUNT arguments (interrupts masked, on a stack
   with room for the handler, as for a breakpoint).  */
extern void probeport_stub_marker(const struct probeport_marker *marker,
				  const uint64_t *args, size_t count);

/* One request payload (PROTOCOL.md section 4, no framing).  OUT gets the
   events the request produced, then exactly one PROBEPORT_OUT_REPLY.  */
extern void probeport_stub_handle(const unsigned char *payload, size_t length,
				  probeport_out_t out, void *cookie);

/* Every pending event and loss report, as PROBEPORT_OUT_EVENT.  */
extern void probeport_stub_drain(probeport_out_t out, void *cookie);

/* The port over a byte stream: frames in, frames out (PROBEPORT_OUT_BYTES).  */
extern void probeport_stub_serve_bytes(const unsigned char *input, size_t length,
				       probeport_out_t out, void *cookie);

/* Ends the session (every probe disarmed, text restored).  */
extern void probeport_stub_end_session(void);

/* Ends the session if its lease expired at NOW_NS; returns 1 if it did.  */
extern int probeport_stub_poll(uint64_t now_ns);

/* 1 while a session is open.  */
extern int probeport_stub_session_open(void);

/*
 * The platform (the kernel's glue).
 */

extern unsigned int probeport_md_cpu_count(void);
/* Probe context.  */
extern unsigned int probeport_md_cpu_id(void);
/* Probe context: an identifier of the current thread.  */
extern uint64_t probeport_md_task_id(void);
/* Copies the current task's name into DST (at most SIZE bytes); returns the
   length.  */
extern size_t probeport_md_task_name(unsigned char *dst, size_t size);
/* Probe context: monotonic nanoseconds.  */
extern uint64_t probeport_md_now_ns(void);
/* Probe context: copies kernel memory without ever faulting the kernel.
   Returns 0, or -1 with the first unreadable address in *FAULT.  */
extern int probeport_md_read(void *dst, uint64_t src, size_t length,
			     uint64_t *fault);
/* Probe context: as probeport_md_read, into kernel data memory.  */
extern int probeport_md_write(uint64_t dst, const void *src, size_t length,
			      uint64_t *fault);
/* Writes kernel text through a writable alias and serialises every CPU.
   Returns 0, -1 if ADDRESS is not kernel text, -2 if unsupported.  */
extern int probeport_md_write_text(uint64_t address, const void *bytes,
				   size_t length);
/* Masks interrupts on this CPU and returns the previous state (nests).  */
extern unsigned long probeport_md_intr_disable(void);
extern void probeport_md_intr_restore(unsigned long state);
/* Static strings: the kernel's name and its GNU build-id (may be empty).  */
extern const unsigned char *probeport_md_kernel_name(size_t *length);
extern const unsigned char *probeport_md_build_id(size_t *length);
/* The text that must never be probed (trap path, stub, glue).  */
extern void probeport_md_forbidden_text(uint64_t *start, uint64_t *end);
/* Probe context: asks the drainer thread to run soon, without blocking.  */
extern void probeport_md_wake_server(void);
/* The kernel's marker table and its length (read once, at init).  */
extern struct probeport_marker *probeport_md_markers(size_t *count);
/* A panic in the stub.  Does not return.  */
extern void probeport_md_panic(const unsigned char *message, size_t length)
	__attribute__ ((noreturn));

#endif /* _PROBEPORT_STUB_H_ */
