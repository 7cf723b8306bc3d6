; expect: 0 unknown-helper
; Helper numbers start at 1.
        call 0
        exit
