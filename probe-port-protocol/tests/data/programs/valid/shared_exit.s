; Several paths join at one exit; the state at the join is the meet of all of them.
        ldxdw r2, [r1+40]
        mov64 r0, 0
        jeq r2, 1, one
        jeq r2, 2, two
        ja out
one:
        mov64 r0, 10
        ja out
two:
        mov64 r0, 20
out:
        exit
