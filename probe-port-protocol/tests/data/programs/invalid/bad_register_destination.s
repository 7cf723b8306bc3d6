; expect: 0 bad-register
; There is no r11.
        mov64 r11, 1
        mov64 r0, 0
        exit
