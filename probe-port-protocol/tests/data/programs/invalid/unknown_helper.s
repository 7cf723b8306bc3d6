; expect: 0 unknown-helper
; Helper 99 does not exist.
        call 99
        exit
