; expect: 4 map-not-constant
; 0x10001 is no map number (they are 16 bits); the verifier does not track it.
        lddw r1, 0x10001
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r0, 0
        exit
