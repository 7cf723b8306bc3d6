; expect: 0 empty-program
; A program with no instructions at all.
