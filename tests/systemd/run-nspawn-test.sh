#!/usr/bin/env bash
# kleakd as a real systemd service.
#
# Boots systemd inside systemd-nspawn on a throwaway overlay of the host root
# (writes vanish at power-off), installs kleakd there with `cmake --install`
# and drives it through systemctl: Type=notify start, STATUS=, journald
# priorities, a leak seen through kleakctl, the socket's mode and group,
# reload, periodic snapshots, the watchdog, a clean stop that detaches every
# BPF program, socket activation, a start that fails for lack of capabilities,
# and the unit's `systemd-analyze security` exposure; and kleakd-exporter,
# socket-activated, scraped by a real Prometheus whose PromQL finds the leak.
#
# usage: run-nspawn-test.sh BUILD_DIR SOURCE_DIR      (as root; ctest runs it
#        as the `systemd_nspawn` test, label `systemd`)
#
# Prints "PASS: ..." / "FAIL: ..." per check and ends with "N passed, M failed";
# exits 0 only when nothing failed. Not root, or systemd-nspawn missing: exit 1
# (exit 77, a ctest skip, when KLEAKD_ALLOW_KERNEL_SKIP=1, like the kernel tests).
# Every wait is time-boxed, and the whole run stays inside a budget
# (KLEAKD_NSPAWN_BUDGET seconds, default 215) that leaves time for cleanup
# before ctest's 300 s timeout.
# The boot, the helpers and the teardown are shared with the package test:
# nspawn-lib.sh beside this script.
set -uo pipefail

prog=${0##*/}
usage() { echo "usage: $prog BUILD_DIR SOURCE_DIR" >&2; exit 2; }
# shellcheck source=tests/systemd/nspawn-lib.sh
source "$(dirname "$(realpath -e -- "${BASH_SOURCE[0]}")")/nspawn-lib.sh" ||
    { echo "$prog: cannot read nspawn-lib.sh" >&2; exit 1; }

[ $# -eq 2 ] || usage
BUILD_DIR=$(realpath -e -- "$1" 2>/dev/null) || die "build directory '$1' does not exist"
SOURCE_DIR=$(realpath -e -- "$2" 2>/dev/null) || die "source directory '$2' does not exist"

# --- prerequisites ------------------------------------------------------------
nspawn_prerequisites
for f in kleakd kleakctl kleakd-exporter; do
    [ -x "$BUILD_DIR/$f" ] || die "$BUILD_DIR/$f is missing: build first (cmake --build $BUILD_DIR --target kleakd kleakctl kleakd-exporter)"
done
[ -f "$BUILD_DIR/cmake_install.cmake" ] && [ -f "$BUILD_DIR/CMakeCache.txt" ] ||
    die "$BUILD_DIR is not a configured CMake build directory"
[ -f "$SOURCE_DIR/kleakd.service" ] || die "$SOURCE_DIR is not the kleakd source tree (no kleakd.service)"
# The container's root is a non-recursive bind of the host's /, and it mounts
# its own /tmp: the source and build trees are bound in explicitly, so they
# may live anywhere (CI clones under /tmp).
nspawn_cgroups

# --- state, reporting, boot -------------------------------------------------------
nspawn_init "${KLEAKD_NSPAWN_BUDGET:-215}" KLEAKD_NSPAWN_BUDGET 11
nspawn_boot 0 "$SOURCE_DIR" "$BUILD_DIR"

C 10 test -f "$BUILD_DIR/cmake_install.cmake" -a -f "$SOURCE_DIR/kleakd.service" ||
    fatal "$BUILD_DIR or $SOURCE_DIR is not visible inside the container"

# --- 1: install ---------------------------------------------------------------
step 1 "cmake --install --prefix /usr, systemd-sysusers, daemon-reload"
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$BUILD_DIR/CMakeCache.txt")
if ! grep -qF 'DESTINATION "/etc/kleakd"' "$BUILD_DIR/cmake_install.cmake"; then
    # install(FILES config/kleakd.conf DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/kleakd)
    # is resolved when CMake configures: for prefix /usr/local it is
    # /usr/local/etc/kleakd whatever `cmake --install --prefix` says later;
    # only a configure-time prefix of /usr gives /etc/kleakd, where the unit
    # looks. Re-configure inside the container: the overlay throws the
    # rewritten build files away at power-off, so the host's build tree is
    # untouched. Tests and benchmarks are left out, so work in progress under
    # tests/ cannot break this configure.
    note "$BUILD_DIR (configured for prefix $prefix) would install kleakd.conf to $(sed -n 's|^ *file(INSTALL DESTINATION "\([^"]*\)".*config/kleakd\.conf".*|\1|p' "$BUILD_DIR/cmake_install.cmake" | head -n 1), not /etc/kleakd; re-configuring it inside the container (overlay, discarded) with -DCMAKE_INSTALL_PREFIX=/usr"
    if out=$(C 120 cmake -S "$SOURCE_DIR" -B "$BUILD_DIR" -DCMAKE_INSTALL_PREFIX=/usr \
        -DKLEAKD_BUILD_TESTS=OFF -DKLEAKD_BUILD_BENCH=OFF 2>&1); then
        pass "re-configured the build tree with prefix /usr (inside the container only)"
    else
        echo "$out" | tail -n 20 | indent
        fatal "re-configuring $BUILD_DIR with -DCMAKE_INSTALL_PREFIX=/usr failed"
    fi
fi
if out=$(C 120 cmake --install "$BUILD_DIR" --prefix /usr 2>&1); then
    pass "cmake --install $BUILD_DIR --prefix /usr"
    echo "$out" | grep -E 'Installing|Up-to-date' | indent
else
    echo "$out" | tail -n 20 | indent
    fatal "cmake --install failed"
fi
missing=""
for f in /usr/sbin/kleakd /usr/bin/kleakctl /usr/bin/kleakd-exporter /usr/lib/systemd/system/kleakd.service \
    /usr/lib/systemd/system/kleakd.socket /usr/lib/systemd/system/kleakd-exporter.service \
    /usr/lib/systemd/system/kleakd-exporter.socket /usr/share/kleakd/prometheus/kleakd-rules.yml \
    /usr/lib/sysusers.d/kleakd.conf /etc/kleakd/kleakd.conf; do
    C 10 test -f "$f" || missing+="$f "
done
if [ -z "$missing" ]; then
    pass "installed where the units expect them: /usr/sbin/kleakd, /usr/bin/kleakctl, /usr/bin/kleakd-exporter, the kleakd and kleakd-exporter units, /usr/share/kleakd/prometheus/kleakd-rules.yml, /usr/lib/sysusers.d/kleakd.conf, /etc/kleakd/kleakd.conf"
else
    fatal "not installed: $missing"
fi
if C 30 systemd-sysusers 2>&1 | indent && [ -n "$(C 10 getent group kleakd)" ]; then
    pass "systemd-sysusers created the group kleakd ($(C 10 getent group kleakd))"
else
    fatal "systemd-sysusers did not create the group kleakd"
fi
C 60 systemctl daemon-reload || fatal "systemctl daemon-reload failed"
fragment=$(unit_prop kleakd.service FragmentPath)
if [ "$(C 10 realpath -e "$fragment")" = /usr/lib/systemd/system/kleakd.service ] &&
    C 10 cmp -s /usr/lib/systemd/system/kleakd.service "$SOURCE_DIR/kleakd.service"; then
    pass "systemd loads kleakd.service from $fragment, the file from the source tree"
else
    fatal "systemd loads kleakd.service from '$fragment', not the installed copy of $SOURCE_DIR/kleakd.service"
fi
if out=$(C 60 systemd-analyze verify --man=no /usr/lib/systemd/system/kleakd.service \
    /usr/lib/systemd/system/kleakd.socket /usr/lib/systemd/system/kleakd-exporter.service \
    /usr/lib/systemd/system/kleakd-exporter.socket /usr/lib/systemd/system/kleakd-exporter-textfile.service \
    /usr/lib/systemd/system/kleakd-exporter-textfile.timer 2>&1) && [ -z "$(grep -i kleakd <<<"$out")" ]; then
    pass "systemd-analyze verify: kleakd.{service,socket}, kleakd-exporter.{service,socket}, kleakd-exporter-textfile.{service,timer} are clean"
else
    echo "$out" | indent
    fail "systemd-analyze verify complains about the units"
fi

# [Install]: enabling the service also enables the socket (Also=kleakd.socket).
if C 30 systemctl enable --quiet kleakd.service &&
    [ "$(C 10 systemctl is-enabled kleakd.service kleakd.socket | tr '\n' ' ')" = "enabled enabled " ]; then
    pass "systemctl enable kleakd.service enables kleakd.service and kleakd.socket"
else
    fail "systemctl enable kleakd.service: is-enabled says '$(C 10 systemctl is-enabled kleakd.service kleakd.socket | tr '\n' ' ')'"
fi
C 30 systemctl disable --quiet kleakd.service kleakd.socket || fail "systemctl disable kleakd.service kleakd.socket failed"

# --- 2: start -----------------------------------------------------------------
step 2 "systemctl start kleakd (Type=notify)"
if C 60 systemctl start kleakd.service; then
    pass "systemctl start kleakd returned success (READY=1 arrived)"
else
    fatal "systemctl start kleakd failed"
fi
check "kleakd.service is active" is_state kleakd.service active
status=$(unit_prop kleakd.service StatusText)
if [ -n "$status" ]; then pass "StatusText is set by STATUS=: '$status'"; else fail "StatusText is empty"; fi
current_run
if line=$(wait_journal "tracing kmem:kmalloc" 10); then
    priority=${line%%$'\t'*}
    message=${line#*$'\t'}
    if [ "$priority" = 6 ] && [ "${message:0:1}" != "<" ]; then
        pass "journal: PRIORITY=6 '$message'"
    else
        fail "the 'tracing kmem:kmalloc' line has PRIORITY '$priority' and MESSAGE '$message' (want 6, no <N> prefix)"
    fi
else
    fail "no 'tracing kmem:kmalloc' line from kleakd in the journal (invocation $INV)"
fi
WATCHDOG_T0=$(unit_prop kleakd.service WatchdogTimestampMonotonic)
watchdog_usec=$(unit_prop kleakd.service WatchdogUSec)
if record_daemon_progs; then
    pass "kleakd holds BPF programs (ids $LAST_IDS)"
else
    fail "could not read which BPF programs kleakd holds"
fi

# --- 3: a leak, seen through kleakctl ------------------------------------------
step 3 "hold 64 pipes open; kleakctl leaks --json"
check_pipe_leak
sock=$(C 10 stat -c '%a %G %F' /run/kleakd/kleakd.sock)
if [ "$sock" = "660 kleakd socket" ]; then
    pass "/run/kleakd/kleakd.sock: mode 0660, group kleakd"
else
    fail "/run/kleakd/kleakd.sock is '$sock', want '660 kleakd socket'"
fi
kleakd_gid=$(C 10 getent group kleakd | cut -d: -f3)
if C 20 setpriv --reuid=65534 --regid="$kleakd_gid" --clear-groups kleakctl version >/dev/null; then
    pass "a non-root member of group kleakd may query the daemon"
else
    fail "a non-root process in group kleakd cannot query the daemon"
fi
if out=$(C 20 setpriv --reuid=65534 --regid=65534 --clear-groups kleakctl version 2>&1); then
    fail "a process outside group kleakd could query the daemon"
elif grep -q 'permission denied' <<<"$out"; then
    pass "a non-root process outside group kleakd is refused: $out"
else
    fail "a process outside group kleakd failed, but not with 'permission denied': $out"
fi

# restored_with_pipes KIND WHEN: after a restart, the journal says the state
# came from KIND's image ("clean stop", "checkpoint"), and the 64 pipes held
# since before it are still outstanding at alloc_pipe_info.
restored_with_pipes() {
    current_run
    if line=$(wait_journal "state restored from the $1 image" 10); then
        pass "journal: '${line#*$'\t'}'"
    else
        fail "no 'state restored from the $1 image' line $2"
    fi
    PIPE_OUTSTANDING=0
    if wait_for 10 pipe_leaks; then
        pass "$2: $PIPE_OUTSTANDING outstanding at alloc_pipe_info (>= 64): the pipes held across it are still known"
    else
        fail "$2 kleakctl shows $PIPE_OUTSTANDING outstanding at alloc_pipe_info, want >= 64 (state not restored)"
    fi
}

# --- 3b: a restart keeps the state ------------------------------------------------
step 3b "systemctl restart kleakd: the held pipes are still outstanding (the fd store)"
# The stopping daemon stores its state image with systemd (FDSTORE=1); the new
# one gets it back and goes on: the 64 pipes allocated before the restart are
# still outstanding, and their frees will match (README "What survives what").
if C 60 systemctl restart kleakd.service; then pass "systemctl restart kleakd returned success"; else fail "systemctl restart kleakd failed"; fi
restored_with_pipes "clean stop" "after the restart"
state=$(C 20 kleakctl stats --json | "$PY" -c '
import json, sys
s = json.load(sys.stdin)["state"]
print(s["restored_from"], s["gap"]["ns"] if s["gap"] else "none", s["restored_outstanding"])' 2>&1)
if [[ "$state" == "clean stop "* ]]; then
    pass "kleakctl stats: state restored from '${state% * *}', gap ${state#clean stop } (ns, restored outstanding)"
else
    fail "kleakctl stats: state is '$state', want restored_from 'clean stop'"
fi
if record_daemon_progs; then pass "the restarted kleakd holds BPF programs (ids $LAST_IDS)"; else fail "could not read which BPF programs kleakd holds after the restart"; fi
WATCHDOG_T0=$(unit_prop kleakd.service WatchdogTimestampMonotonic)

# --- 3c: a load through a restart loses nothing -------------------------------------
step 3c "pipes opened and closed through systemctl restart kleakd: nothing missed (programs kept attached)"
# Programs, rings and maps stay in systemd's fd store across the restart
# (README "What survives what"): the new kleakd adopts the same links, reads
# the rings from where the old one stopped, and the load's allocations and
# frees all arrive, matched. The rings are read until the old process hands
# its tail over and from the new process's first moment (kernel/ring_tail.h,
# kernel/handed_rings.h); in between they only fill (state.unread_ns,
# printed). Its blind time is measured, not assumed: the allocations the load
# made against those kleakd counted at alloc_pipe_info.
# A paced load (20,000 pipes/s, ~16 MB/s of records) and one as fast as it
# can (~100 MB/s on one CPU) must lose nothing; bench/restart_blind.py
# measures the same against a baseline.
link_ids() { C 20 sh -c "grep -h '^link_id:' /proc/$(unit_prop kleakd.service MainPID)/fdinfo/* 2>/dev/null" | awk '{print $2}' | sort -n | tr '\n' ' '; }
# pipe_site_totals: "ALLOCS UNMATCHED DROPPED" at alloc_pipe_info / free_pipe_info, and losses.dropped.
pipe_site_totals() {
    C 20 kleakctl report --json --top 100000 | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
allocs = sum(s.get("allocs", 0) for s in d["sites"] if s.get("function") == "alloc_pipe_info")
unmatched = sum(u["count"] for u in d["unmatched_frees"] if u.get("function") == "free_pipe_info")
print(allocs, unmatched, d["losses"]["dropped"])'
}
# churn_through_restart RATE (pipes/s, 0: as fast as it can): sets missed,
# unmatched_rise, dropped_rise and prints what was seen.
churn_through_restart() {
    local rate=$1 links_before links_after state unread churned churn_s
    local allocs0 unmatched0 dropped0 allocs1 unmatched1 dropped1
    C 5 rm -f /run/kleakd-churn
    links_before=$(link_ids)
    read -r allocs0 unmatched0 dropped0 <<<"$(pipe_site_totals)"
    C 30 systemd-run --quiet --collect --unit="kleakd-test-churn-$rate" -p RuntimeMaxSec=60 "$PY" -c '
import os, sys, time
rate, n, start = int(sys.argv[1]), 0, time.monotonic()
while time.monotonic() < start + 4:
    r, w = os.pipe(); os.close(r); os.close(w); n += 1
    if rate and n > rate * (time.monotonic() - start):
        time.sleep(0.001)
open("/run/kleakd-churn", "w").write("%d %.3f" % (n, 4.0))' "$rate" || fail "systemd-run of the pipe churn failed"
    sleep 1
    if C 60 systemctl restart kleakd.service; then pass "systemctl restart kleakd during the churn ($([ "$rate" -gt 0 ] && echo "$rate pipes/s" || echo "as fast as it can"))"; else fail "systemctl restart kleakd failed"; fi
    current_run
    churn_done() { C 5 test -s /run/kleakd-churn; }
    wait_for 20 churn_done || fail "the pipe churn did not finish"
    sleep 1  # a drain or two
    read -r churned churn_s <<<"$(C 5 cat /run/kleakd-churn)"
    read -r allocs1 unmatched1 dropped1 <<<"$(pipe_site_totals)"
    links_after=$(link_ids)
    state=$(C 20 kleakctl stats --json | "$PY" -c '
import json, sys
s = json.load(sys.stdin)["state"]
print(s["programs"], s["gap"]["ns"] if s["gap"] else "none")')
    unread=$(C 20 kleakctl stats --json | "$PY" -c '
import json, sys
s = json.load(sys.stdin)["state"]
print("%.1f ms unread, tail %d bytes" % ((s.get("unread_ns") or 0) / 1e6, s.get("tail_bytes", 0)))')
    if [ "$state" = "adopted 0" ]; then pass "kleakctl stats: programs adopted, gap 0 ns"; else fail "kleakctl stats: programs and gap '$state', want 'adopted 0'"; fi
    if [ -n "$links_before" ] && [ "$links_before" = "$links_after" ]; then
        pass "the restarted kleakd holds the same BPF links ($links_after): none was detached"
    else
        fail "BPF links before the restart '$links_before', after '$links_after'"
    fi
    # 2 allocations a pipe at alloc_pipe_info; other processes' pipes only add.
    missed=$((2 * churned - (allocs1 - allocs0)))
    unmatched_rise=$((unmatched1 - unmatched0))
    dropped_rise=$((dropped1 - dropped0))
    echo "    churn: $churned pipes in ${churn_s}s; kleakd counted $((allocs1 - allocs0)) allocations at alloc_pipe_info" \
         "(want >= $((2 * churned))): $(blind_ms "$missed" "$churned" "$churn_s") ms blind; the rings went $unread;" \
         "unmatched frees at free_pipe_info +$unmatched_rise, records dropped +$dropped_rise"
}
blind_ms() { "$PY" -c "print('%.1f' % (max($1, 0) / (2 * $2 / $3) * 1000))"; }

churn_through_restart 20000
if [ "$missed" -le 0 ] && [ "$dropped_rise" -eq 0 ] && [ "$unmatched_rise" -lt 16 ]; then
    pass "at 20,000 pipes/s nothing was missed across the restart: every allocation counted, frees matched (+$unmatched_rise unmatched), no record dropped"
else
    fail "at 20,000 pipes/s the restart lost records: $missed allocations missed, +$unmatched_rise unmatched frees, +$dropped_rise records dropped"
fi
churn_through_restart 0
# As fast as it can, too: the stopping kleakd gives each CPU a ring four
# times the size for the restart (TracingSession::make_room_for_restart()).
# A miss with no record dropped would be a silent loss.
if [ "$missed" -le 0 ] && [ "$dropped_rise" -eq 0 ] && [ "$unmatched_rise" -lt 16 ]; then
    pass "as fast as it can, nothing was missed across the restart: every allocation counted, frees matched (+$unmatched_rise unmatched), no record dropped"
elif [ "$missed" -le "$dropped_rise" ] && [ "$unmatched_rise" -le $((16 + dropped_rise)) ]; then
    fail "as fast as it can, the rings overflowed while no kleakd read them: $missed allocations missed, +$unmatched_rise unmatched frees, +$dropped_rise records dropped (counted)"
else
    fail "as fast as it can, $missed allocations missed and +$unmatched_rise unmatched frees, but only $dropped_rise records counted as dropped: a silent loss"
fi
stopped_rings=$(C 20 journalctl -u kleakd --since -30s --no-pager -o cat | grep -o 'write into a [0-9A-Za-z.]* ring until the next kleakd reads it' | tail -n1)
back_rings=$(C 20 journalctl -u kleakd --since -30s --no-pager -o cat | grep -c "ring is back from")
if [ -n "$stopped_rings" ] && [ "$back_rings" -ge 1 ]; then
    pass "journal: the stopping kleakd's CPUs '$stopped_rings'; the next put $back_rings back to size"
else
    fail "journal: no restart rings ('$stopped_rings') or none put back to size ($back_rings)"
fi
record_daemon_progs || fail "could not read which BPF programs kleakd holds after the churn restart"
WATCHDOG_T0=$(unit_prop kleakd.service WatchdogTimestampMonotonic)

# --- 4: kleakd-exporter and Prometheus -----------------------------------------
step 4 "kleakd-exporter.socket; a real Prometheus scrapes it and PromQL finds the pipes"
# http_get URL [ACCEPT]: "STATUS<TAB>CONTENT-TYPE" on the first line, then the body.
http_get() {
    C 20 "$PY" -c '
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Accept": sys.argv[2]} if len(sys.argv) > 2 else {})
try:
    r = urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    r = e
print("%d\t%s" % (r.status, r.headers.get("Content-Type", "")))
sys.stdout.write(r.read().decode())' "$@"
}
if C 30 systemctl start kleakd-exporter.socket; then
    pass "systemctl start kleakd-exporter.socket"
else
    fail "systemctl start kleakd-exporter.socket failed"
fi
check "kleakd-exporter.service is not running before the first scrape" is_state kleakd-exporter.service inactive
scrape=$(http_get http://127.0.0.1:9785/metrics)
head_line=$(head -n 1 <<<"$scrape")
body=$(tail -n +2 <<<"$scrape")
if [ "$head_line" = $'200\ttext/plain; version=0.0.4; charset=utf-8' ] && grep -qx 'kleakd_up 1' <<<"$scrape"; then
    pass "GET /metrics on :9785 started kleakd-exporter.service: 200, text format 0.0.4, kleakd_up 1"
else
    echo "$scrape" | head -n 20 | indent
    C 20 journalctl --no-pager -n 20 -u kleakd-exporter.service | indent
    fail "GET /metrics: '$head_line', want 200 text/plain and kleakd_up 1"
fi
pipes=$("$PY" -c '
import re, sys
n = 0
for line in sys.stdin:
    m = re.match(r"kleakd_site_outstanding_allocations\{(.*)\} (\S+)$", line.strip())
    if m and "function=\"alloc_pipe_info\"" in m.group(1):
        n += float(m.group(2))
print(int(n))' <<<"$scrape")
if [ "${pipes:-0}" -ge 64 ]; then
    pass "the scrape shows $pipes outstanding allocations at alloc_pipe_info sites (>= 64)"
else
    grep '^kleakd_site_outstanding_allocations' <<<"$scrape" | head -n 10 | indent
    fail "the scrape shows ${pipes:-0} outstanding allocations at alloc_pipe_info, want >= 64"
fi
exporter_user=$(C 10 ps -o user=,group=,supgrp= -p "$(unit_prop kleakd-exporter.service MainPID)")
if [ -n "$exporter_user" ] && [ "${exporter_user%% *}" != root ] && grep -qw kleakd <<<"$exporter_user"; then
    pass "kleakd-exporter runs unprivileged (user group supplementary: $exporter_user)"
else
    fail "kleakd-exporter runs as '$exporter_user', want a dynamic user in group kleakd"
fi
# C runs commands with stdin from /dev/null: the text goes as an argument.
if grep -qx 'kleakd_up 1' <<<"$body" &&
    out=$(C 20 sh -c 'printf "%s\n" "$1" | promtool check metrics' sh "$body" 2>&1) && [ -z "$out" ]; then
    pass "promtool check metrics: nothing wrong with the scrape ($(grep -vc '^#' <<<"$body") samples)"
else
    echo "$out" | head -n 20 | indent
    fail "promtool check metrics complains about the scrape"
fi
om=$(http_get http://127.0.0.1:9785/metrics "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
if [ "$(head -n 1 <<<"$om")" = $'200\tapplication/openmetrics-text; version=1.0.0; charset=utf-8' ] &&
    [ "$(tail -n 1 <<<"$om")" = "# EOF" ]; then
    pass "Accept: application/openmetrics-text gets OpenMetrics 1.0.0, ending in # EOF"
else
    fail "OpenMetrics: '$(head -n 1 <<<"$om")' ... '$(tail -n 1 <<<"$om")'"
fi
status=$(http_get http://127.0.0.1:9785/ | head -n 1)
if [ "${status%%$'\t'*}" = 404 ]; then pass "GET / is a 404"; else fail "GET / answered '$status', want 404"; fi

prometheus_yml='global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - /usr/share/kleakd/prometheus/kleakd-rules.yml
scrape_configs:
  - job_name: kleakd
    static_configs:
      - targets: ["127.0.0.1:9785"]'
C 10 mkdir -p /tmp/prom
C 10 sh -c 'printf "%s\n" "$1" > /tmp/prom/prometheus.yml' sh "$prometheus_yml"
if C 30 systemd-run --quiet --collect --unit=kleakd-test-prometheus -p RuntimeMaxSec=300 \
    prometheus --config.file=/tmp/prom/prometheus.yml --storage.tsdb.path=/tmp/prom/data \
    --web.listen-address=127.0.0.1:9090; then
    pass "started Prometheus (scrape interval 1s) as kleakd-test-prometheus.service"
else
    fail "systemd-run prometheus failed"
fi
# promql QUERY: the first result's value, or nothing.
promql() {
    C 20 "$PY" -c '
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(sys.argv[1])
try:
    doc = json.load(urllib.request.urlopen(url, timeout=5))
except Exception:
    sys.exit(1)
res = doc["data"]["result"]
if not res:
    sys.exit(1)
print(res[0]["value"][1])' "$1"
}
query='sum(kleakd_site_outstanding_allocations{function="alloc_pipe_info"}) >= 64'
if value=$(wait_for 30 promql "$query"); then
    pass "Prometheus: $query -> $value"
else
    C 20 journalctl --no-pager -n 20 -u kleakd-test-prometheus.service | indent
    fail "Prometheus did not return the pipes within 30s: $query"
fi
if value=$(promql 'count(kleakd_up == 1) and count(up{job="kleakd"} == 1)'); then
    pass "Prometheus: kleakd_up 1 and up{job=\"kleakd\"} 1"
else
    fail "Prometheus does not have kleakd_up 1 and up 1 for the exporter"
fi
rules=$(C 20 "$PY" -c '
import json, urllib.request
doc = json.load(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/rules", timeout=5))
print(" ".join(r["name"] for g in doc["data"]["groups"] for r in g["rules"] if r.get("health") == "ok"))' 2>&1)
if [ "$(wc -w <<<"$rules")" -eq 4 ]; then
    pass "Prometheus loaded the shipped alert rules, all healthy: $rules"
else
    fail "Prometheus's rules: '$rules', want the 4 of kleakd-rules.yml, healthy"
fi
C 20 systemctl stop kleakd-test-prometheus.service
# The textfile unit, as on a host with Debian's prometheus-node-exporter: its
# directory, owned by user prometheus (the prometheus package made the user).
C 10 install -d -o prometheus -g prometheus /var/lib/prometheus/node-exporter
if C 60 systemctl start kleakd-exporter-textfile.service &&
    prom=$(C 10 cat /var/lib/prometheus/node-exporter/kleakd.prom) && grep -qx 'kleakd_up 1' <<<"$prom" &&
    [ "$(C 10 stat -c '%a %U' /var/lib/prometheus/node-exporter/kleakd.prom)" = "644 prometheus" ] &&
    [ "$(C 10 ls -A /var/lib/prometheus/node-exporter)" = kleakd.prom ]; then
    pass "kleakd-exporter-textfile.service wrote kleakd.prom (kleakd_up 1, mode 644, owner prometheus, no temporary file left)"
else
    C 20 journalctl --no-pager -n 10 -u kleakd-exporter-textfile.service | indent
    fail "kleakd-exporter-textfile.service did not write /var/lib/prometheus/node-exporter/kleakd.prom with kleakd_up 1"
fi
C 20 systemctl stop kleakd-test-pipes.service

# --- 5: reload ----------------------------------------------------------------
step 5 "systemctl reload kleakd"
pid_before=$(unit_prop kleakd.service MainPID)
if C 30 systemctl reload kleakd.service; then
    pass "systemctl reload kleakd returned success"
else
    fail "systemctl reload kleakd failed"
fi
if line=$(wait_journal "configuration reloaded" 10); then
    pass "journal: '${line#*$'\t'}'"
else
    fail "no 'configuration reloaded' line in the journal"
fi
check "kleakd.service is still active after the reload" wait_for 10 is_state kleakd.service active
pid_after=$(unit_prop kleakd.service MainPID)
if [ "$pid_before" = "$pid_after" ]; then
    pass "same main process after the reload (pid $pid_after in the container)"
else
    fail "the main pid changed across the reload: $pid_before -> $pid_after"
fi

# --- 6: snapshots -------------------------------------------------------------
step 6 "snapshots every 2s after a reload"
# Only the snapshots' interval (60s); verdicts.interval (10s) stays as shipped.
# The checkpoints too, for step 6b's crash.
C 10 sed -i -E 's/"interval":[[:space:]]*"60s"/"interval": "2s"/; s/"checkpoint_interval":[[:space:]]*"60s"/"checkpoint_interval": "2s"/' /etc/kleakd/kleakd.conf
if C 10 grep -q '"interval": "2s"' /etc/kleakd/kleakd.conf && C 10 grep -q '"checkpoint_interval": "2s"' /etc/kleakd/kleakd.conf; then
    pass "set \"interval\" and \"checkpoint_interval\" to \"2s\" in /etc/kleakd/kleakd.conf (inside the container)"
else
    fail "could not set the snapshot interval in /etc/kleakd/kleakd.conf"
fi
reload_epoch=$(C 10 date +%s)
C 30 systemctl reload kleakd.service || fail "systemctl reload kleakd failed"
snapshots_ok() {
    C 20 "$PY" -c '
import glob, json, os, sys
d = "/var/lib/kleakd/snapshots"
since = float(sys.argv[1])
fresh = [f for f in glob.glob(d + "/snapshot-*.json") if os.stat(f).st_mtime >= since]
latest = json.load(open(d + "/latest.json"))
ok = len(fresh) >= 2 and "sites" in latest and "totals" in latest
print("%d snapshot files since the reload, latest.json has %d sites" % (len(fresh), len(latest["sites"])))
sys.exit(0 if ok else 1)' "$reload_epoch" 2>/dev/null
}
if out=$(wait_for 15 snapshots_ok); then
    pass "/var/lib/kleakd/snapshots: $(tail -n 1 <<<"$out")"
else
    C 10 ls -l /var/lib/kleakd/snapshots 2>&1 | indent
    fail "no periodic snapshots (latest.json and >= 2 snapshot files within 15s of the reload)"
fi

# --- 6b: a crash resumes from the last checkpoint -----------------------------------
step 6b "systemctl kill -s KILL kleakd: Restart=on-failure resumes from the checkpoint"
check_pipe_leak
sleep 5  # two checkpoints (every 2s since the reload) after the pipes
killed_pid=$MPID
C 20 systemctl kill -s KILL kleakd.service || fail "systemctl kill -s KILL kleakd failed"
restarted() { is_state kleakd.service active && [ "$(unit_prop kleakd.service ExecMainPID)" != "$killed_pid" ]; }
if wait_for 30 restarted; then pass "systemd restarted kleakd after SIGKILL (RestartSec=5s)"; else fail "kleakd was not restarted within 30s of SIGKILL"; fi
restored_with_pipes "checkpoint" "after the crash"
gap=$(C 20 kleakctl stats --json | "$PY" -c '
import json, sys
s = json.load(sys.stdin)["state"]
print(s["gap"]["ns"] if s["restored_from"] == "checkpoint" and s["gap"] else "")' 2>&1)
if [[ "$gap" =~ ^[0-9]+$ ]] && [ "$gap" -gt 0 ]; then
    pass "kleakctl stats: the gap since the checkpoint is reported: $gap ns not traced"
else
    fail "kleakctl stats: no gap reported after the crash ('$gap')"
fi
C 20 systemctl stop kleakd-test-pipes.service
record_daemon_progs || fail "could not read which BPF programs kleakd holds after the crash"
WATCHDOG_T0=$(unit_prop kleakd.service WatchdogTimestampMonotonic)

# --- 7: stop ------------------------------------------------------------------
step 7 "watchdog, then systemctl stop kleakd"
if [ "$watchdog_usec" = 0 ] || [ -z "$watchdog_usec" ]; then
    fail "WatchdogUSec is '$watchdog_usec': the unit's WatchdogSec is not in force"
else
    # kleakd pets every WatchdogSec/2: the timestamp must move within that.
    watchdog_moved() { [ "$(unit_prop kleakd.service WatchdogTimestampMonotonic)" != "$WATCHDOG_T0" ]; }
    if wait_for 25 watchdog_moved; then
        pass "WATCHDOG=1 pings arrive (WatchdogSec=$watchdog_usec; WatchdogTimestamp moved)"
    else
        fail "no WATCHDOG=1 ping within 25s (WatchdogSec=$watchdog_usec)"
    fi
fi
if C 60 systemctl stop kleakd.service; then pass "systemctl stop kleakd returned success"; else fail "systemctl stop kleakd failed"; fi
check "kleakd.service is inactive" is_state kleakd.service inactive
# A stop empties the fd store: the next start is fresh.
if [ "$(unit_prop kleakd.service NFileDescriptorStore)" = 0 ]; then
    pass "after the stop systemd holds no stored fd of kleakd (NFileDescriptorStore=0)"
else
    fail "after the stop systemd still holds $(unit_prop kleakd.service NFileDescriptorStore) stored fds of kleakd"
fi
# The daemon cannot tell a stop from a restart: it leaves its programs to
# the fd store, and systemd's closing the store detaches them (checked below).
if line=$(wait_journal "final snapshot in" 10); then
    pass "journal: '${line#*$'\t'}'"
else
    fail "no final 'final snapshot in' line in the journal"
fi
left=$(our_progs_left)
in_container=$(C 20 bpftool prog show | grep -c -E 'name kleak(_raw)?__')
if [ -z "$left" ]; then
    pass "bpftool prog show: none of kleakd's programs (${OUR_PROG_IDS[*]}) is loaded any more"
else
    fail "kleakd's BPF programs $left are still loaded after the stop"
fi
if [ "$in_container" -gt 0 ]; then
    note "bpftool in the container lists $in_container kleak__ programs of other processes (BPF ids are host-wide):"
    kleak_progs | indent
fi

# kleakd down, its socket too (a connection to kleakd.socket would start it
# again): the exporter keeps serving; a scrape succeeds with kleakd_up 0,
# and the exporter logs why.
C 30 systemctl stop kleakd.socket
scrape=$(http_get http://127.0.0.1:9785/metrics)
if [ "$(head -n 1 <<<"$scrape" | cut -f1)" = 200 ] && grep -qx 'kleakd_up 0' <<<"$scrape" &&
    ! grep -q '^kleakd_records_total' <<<"$scrape"; then
    pass "with kleakd stopped a scrape still succeeds: 200, kleakd_up 0, no stale kleakd series"
else
    echo "$scrape" | head -n 10 | indent
    fail "with kleakd stopped the scrape is not 200 with kleakd_up 0 alone"
fi
exporter_logged() {
    why=$(C 20 journalctl --no-pager -o cat -u kleakd-exporter.service | grep 'kleakd_up 0: ' | tail -n 1)
    [ -n "$why" ]
}
if wait_for 5 exporter_logged; then pass "the exporter logs why: '$why'"; else fail "no 'kleakd_up 0: ...' line from kleakd-exporter"; fi
C 30 systemctl stop kleakd-exporter.socket kleakd-exporter.service

# --- 8: socket activation -----------------------------------------------------
step 8 "socket activation through kleakd.socket"
if C 30 systemctl start kleakd.socket; then pass "systemctl start kleakd.socket"; else fail "systemctl start kleakd.socket failed"; fi
check "kleakd.socket is active" is_state kleakd.socket active
check "kleakd.service is not running yet" is_state kleakd.service inactive
sock=$(C 10 stat -c '%a %G %F' /run/kleakd/kleakd.sock)
if [ "$sock" = "660 kleakd socket" ]; then
    pass "systemd's /run/kleakd/kleakd.sock: mode 0660, group kleakd"
else
    fail "systemd's socket is '$sock', want '660 kleakd socket'"
fi
if out=$(C 60 kleakctl version 2>&1) && grep -q '^kleakd ' <<<"$out"; then
    pass "kleakctl version answered through the activated socket: $(grep '^kleakd ' <<<"$out")"
else
    echo "$out" | indent
    fail "kleakctl version did not get an answer through kleakd.socket"
fi
check "kleakd.service was started by the socket" is_state kleakd.service active
current_run
if line=$(wait_journal "using the query socket passed by systemd" 10); then
    pass "journal: '${line#*$'\t'}'"
else
    fail "the daemon did not log that it uses the socket passed by systemd"
fi
record_daemon_progs || fail "could not read which BPF programs the socket-activated kleakd holds"
if C 60 systemctl stop kleakd.socket kleakd.service; then
    pass "systemctl stop kleakd.socket kleakd.service"
else
    fail "stopping kleakd.socket and kleakd.service failed"
fi
check "kleakd.socket is inactive" is_state kleakd.socket inactive
check "kleakd.service is inactive" is_state kleakd.service inactive
left=$(our_progs_left)
if [ -z "$left" ]; then pass "the socket-activated kleakd detached its programs (ids $LAST_IDS)"; else fail "programs $left are still loaded"; fi

# --- 9: a start that cannot attach ---------------------------------------------
step 9 "a kleakd without CAP_BPF/CAP_PERFMON ends failed"
# CapabilityBoundingSet= lines are OR-ed together: the empty assignment first
# resets the unit's set, or CAP_CHOWN would just be added to it.
C 10 mkdir -p /run/systemd/system/kleakd.service.d
C 10 sh -c 'printf "[Service]\nCapabilityBoundingSet=\nCapabilityBoundingSet=CAP_CHOWN\nRestart=no\n" >/run/systemd/system/kleakd.service.d/broken.conf'
C 60 systemctl daemon-reload || fail "systemctl daemon-reload failed"
caps=$(unit_prop kleakd.service CapabilityBoundingSet)
[ "$caps" = cap_chown ] || fail "the drop-in did not take: CapabilityBoundingSet=$caps"
if C 60 systemctl start kleakd.service 2>/dev/null; then
    fail "systemctl start kleakd succeeded without CAP_BPF/CAP_PERFMON"
else
    pass "systemctl start kleakd fails without CAP_BPF/CAP_PERFMON"
fi
state=$(C 20 systemctl is-failed kleakd.service)
if [ "$state" = failed ]; then pass "systemctl is-failed kleakd: failed"; else fail "systemctl is-failed kleakd says '$state'"; fi
current_run
if line=$(wait_journal "needs root, or the capabilities CAP_BPF and CAP_PERFMON" 10); then
    priority=${line%%$'\t'*}
    if [ "$priority" = 3 ]; then
        pass "journal: PRIORITY=3 (err, from the <3> prefix) '${line#*$'\t'}'"
    else
        fail "the capability error has PRIORITY '$priority', want 3: '${line#*$'\t'}'"
    fi
else
    fail "no 'needs root, or the capabilities CAP_BPF and CAP_PERFMON' line in the journal"
fi
C 10 rm -rf /run/systemd/system/kleakd.service.d
C 60 systemctl daemon-reload
C 20 systemctl reset-failed kleakd.service
caps=$(unit_prop kleakd.service CapabilityBoundingSet)
if [ "$caps" = "cap_chown cap_syslog cap_perfmon cap_bpf" ]; then
    pass "drop-in removed: CapabilityBoundingSet is back to '$caps'"
else
    fail "after removing the drop-in CapabilityBoundingSet is '$caps'"
fi

# --- 10: systemd-analyze security ------------------------------------------------
step 10 "systemd-analyze security kleakd.service kleakd-exporter.service"
for unit in kleakd.service kleakd-exporter.service; do
    if out=$(C 60 systemd-analyze security --no-pager "$unit" 2>&1); then
        score=$(grep 'Overall exposure level' <<<"$out")
        pass "systemd-analyze security: ${score#→ }"
        echo "    still exposed:"
        grep '✗' <<<"$out" | awk '{printf "%s (%s)  ", $2, $NF} END {print ""}' | fold -s -w 100 | indent
    else
        echo "$out" | tail -n 5 | indent
        fail "systemd-analyze security $unit failed"
    fi
done

end_step
finish
