; expect: 0 misaligned-access
; An 8-byte context load at offset 4.
        ldxdw r0, [r1+4]
        exit
