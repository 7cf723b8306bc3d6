; expect: 0 misaligned-access
; A 2-byte load at an odd offset.
        ldxh r0, [r10-3]
        exit
