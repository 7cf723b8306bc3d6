; expect: 0 uninitialized-register
; r2 is never written; only r1 (context) and r10 (stack) start initialised.
        mov64 r0, r2
        exit
