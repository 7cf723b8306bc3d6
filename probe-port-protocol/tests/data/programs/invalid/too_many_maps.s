; expect: 131 too-many-maps
; One program may use at most 32 distinct maps; the 33rd (map 132) is refused.
; The runner defines hash maps 100 to 139 for this.
        mov64 r1, 100
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 101
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 102
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 103
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 104
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 105
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 106
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 107
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 108
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 109
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 110
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 111
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 112
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 113
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 114
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 115
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 116
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 117
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 118
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 119
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 120
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 121
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 122
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 123
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 124
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 125
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 126
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 127
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 128
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 129
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 130
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 131
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r1, 132
        mov64 r2, r10
        add64 r2, -8
        call map_delete
        mov64 r0, 0
        exit
