#!/bin/sh
# run-fixture-check.sh KLEAKCTL SNAPSHOT OUT_DIR CHECKER: writes the page of
# SNAPSHOT with kleakctl html, then has the checker open it in Chromium.
set -eu
kleakctl=$1 snapshot=$2 out=$3 checker=$4
page="$out/report_fixture.html"
rm -f "$page"
"$kleakctl" html "$snapshot" -o "$page"
exec python3 "$checker" "$page" --expect-site alloc_pipe_info+0xd7 --expect-site alloc_inode+0xa3 \
  --min-curves 3 --expect-restart
