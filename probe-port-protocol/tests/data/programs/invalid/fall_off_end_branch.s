; expect: 3 fall-off-end
; One path exits, the other runs past the end.
        mov64 r0, 0
        jeq r1, 0, done
        exit
done:
        add64 r0, 1
