#!/bin/sh
# make install puts programs, library, headers and man pages under PREFIX, and a
# program compiles and runs against the installed headers and library alone.
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
SAN=${SAN:-0}
SANFLAGS=""
[ "$SAN" = 1 ] && SANFLAGS="-fsanitize=address,undefined"
P="$TMP/prefix"
if make -s install PREFIX="$P" BUILD="$BUILD" SAN="$SAN" >"$TMP/log" 2>&1; then ok install; else not_ok install; cat "$TMP/log" >&2; fi
for f in bin/tensor-cat lib/libthinkpipe.a include/thinkpipe/tensor_stream.h include/thinkpipe/jsonl.h \
    share/man/man1/tensor-cat.1 share/man/man5/thinkpipe-stream.5 share/man/man7/thinkpipe.7; do
    [ -f "$P/$f" ] && ok "installed-$f" || not_ok "installed-$f"
done
cat >"$TMP/user.c" <<'C'
#include <tensor_stream.h>
#include <stdio.h>
int main(void) {
    int32_t ids[3] = {1, 2, 3};
    int64_t shape[1] = {3};
    tp_tensor_ref t = {"input_ids", TP_I32, 1, shape, ids};
    tp_err err;
    tp_stream_writer *w = tp_stream_writer_open("-", 3, &err);
    if (!w || tp_stream_write(w, &t, 1, jv_null(), &err) || tp_stream_writer_close(w, &err)) return 1;
    return 0;
}
C
if ${CC:-cc} -std=c11 -I"$P/include/thinkpipe" "$TMP/user.c" -o "$TMP/user" "$P/lib/libthinkpipe.a" \
    -ljq -larchive -lzstd -lz -lm -fopenmp $SANFLAGS 2>"$TMP/cc.log"; then ok compile-against-installed; else
    not_ok compile-against-installed; cat "$TMP/cc.log" >&2
fi
"$TMP/user" | "$P/bin/tensor-cat" -v 2>/dev/null | grep -q '"data":\[1,2,3\]' && ok installed-program-runs || not_ok installed-program-runs
MANPATH="$P/share/man" man -w tensor-cat >/dev/null 2>&1 && ok man-finds-installed-page || not_ok man-finds-installed-page
finish
