#!/bin/sh
# Every program has a man page, and every page renders without warnings.
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
for tool in tools/*.c; do
    name=$(basename "$tool" .c)
    [ -f "man/man1/$name.1" ] && ok "man-page-$name" || not_ok "man-page-$name"
done
for page in man/man*/*.[157]; do
    if ! command -v groff >/dev/null 2>&1; then echo "skip - render-$(basename "$page"): groff not installed"; continue; fi
    warnings=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
    [ -z "$warnings" ] && ok "render-$(basename "$page")" || { not_ok "render-$(basename "$page")"; echo "$warnings" >&2; }
done
finish
