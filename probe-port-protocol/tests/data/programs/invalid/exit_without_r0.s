; expect: 0 exit-without-r0
; r0 is the return value and must be set.
        exit
