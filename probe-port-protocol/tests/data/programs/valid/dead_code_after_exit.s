; Code after the last exit that no path reaches is shape-checked but not analysed:
; here it reads an uninitialised register and has no exit of its own.
        mov64 r0, 0
        exit
        mov64 r0, r5
        add64 r0, 1
