#!/usr/bin/env bash
# kleakd as a real systemd service.
#
# Boots systemd inside systemd-nspawn on a throwaway overlay of the host root
# (writes vanish at power-off), installs kleakd there with `cmake --install`
# and drives it through systemctl: Type=notify start, STATUS=, journald
# priorities, a leak seen through kleakctl, the socket's mode and group,
# reload, periodic snapshots, the watchdog, a clean stop that detaches every
# BPF program, socket activation, a start that fails for lack of capabilities,
# and the unit's `systemd-analyze security` exposure.
#
# usage: run-nspawn-test.sh BUILD_DIR SOURCE_DIR      (as root; ctest runs it
#        as the `systemd_nspawn` test, label `systemd`)
#
# Prints "PASS: ..." / "FAIL: ..." per check and ends with "N passed, M failed";
# exits 0 only when nothing failed. Not root, or systemd-nspawn missing: exit 1
# (exit 77, a ctest skip, when KLEAKD_ALLOW_KERNEL_SKIP=1, like the kernel tests).
# Every wait is time-boxed, and the whole run stays inside a budget
# (KLEAKD_NSPAWN_BUDGET seconds, default 200) that leaves time for cleanup
# before ctest's 300 s timeout.
set -uo pipefail

prog=${0##*/}
usage() { echo "usage: $prog BUILD_DIR SOURCE_DIR" >&2; exit 2; }
die() { echo "$prog: $*" >&2; exit 1; }
refuse() {  # a missing prerequisite: fail, or skip loudly when allowed
    if [ "${KLEAKD_ALLOW_KERNEL_SKIP:-}" = 1 ]; then
        echo "SKIP: $* (KLEAKD_ALLOW_KERNEL_SKIP=1)"
        exit 77
    fi
    die "$*"
}

[ $# -eq 2 ] || usage
BUILD_DIR=$(realpath -e -- "$1" 2>/dev/null) || die "build directory '$1' does not exist"
SOURCE_DIR=$(realpath -e -- "$2" 2>/dev/null) || die "source directory '$2' does not exist"

# --- prerequisites ------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || refuse "must run as root: it boots systemd in a container and loads BPF programs"
command -v systemd-nspawn >/dev/null ||
    refuse "systemd-nspawn is missing: run scripts/install-deps.sh (it installs systemd-container)"
[ -x /usr/lib/systemd/systemd ] || refuse "systemd is not installed: run scripts/install-deps.sh"
for tool in nsenter mount umount mountpoint findmnt bpftool timeout; do
    command -v "$tool" >/dev/null || refuse "$tool is missing: run scripts/install-deps.sh"
done
PY=/usr/bin/python3  # the system Python: the container has the same one
[ -x "$PY" ] || refuse "$PY is missing: run scripts/install-deps.sh"
[ -r /sys/kernel/btf/vmlinux ] || refuse "this kernel has no BTF (/sys/kernel/btf/vmlinux): kleakd cannot load"
for f in kleakd kleakctl; do
    [ -x "$BUILD_DIR/$f" ] || die "$BUILD_DIR/$f is missing: build first (cmake --build $BUILD_DIR --target kleakd kleakctl)"
done
[ -f "$BUILD_DIR/cmake_install.cmake" ] && [ -f "$BUILD_DIR/CMakeCache.txt" ] ||
    die "$BUILD_DIR is not a configured CMake build directory"
[ -f "$SOURCE_DIR/kleakd.service" ] || die "$SOURCE_DIR is not the kleakd source tree (no kleakd.service)"
# The container's root is a non-recursive bind of the host's /, and it mounts
# its own /tmp: the source and build trees are bound in explicitly, so they
# may live anywhere (CI clones under /tmp).

# cgroups. Without systemd as PID 1, nspawn --keep-unit puts "payload" and
# "supervisor" below its own cgroup; give each run its own parent cgroup so
# concurrent runs cannot share (or delete) each other's.
HOST_SYSTEMD=0
if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then HOST_SYSTEMD=1; fi
CG_ROOTS=()
if [ "$HOST_SYSTEMD" = 0 ]; then
    if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
        CG_ROOTS=(/sys/fs/cgroup)                                  # unified
    elif [ -f /sys/fs/cgroup/systemd/cgroup.procs ]; then
        CG_ROOTS=(/sys/fs/cgroup/systemd)                          # legacy / hybrid
        [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ] && CG_ROOTS+=(/sys/fs/cgroup/unified)
    else
        refuse "no usable cgroup hierarchy: need /sys/fs/cgroup as cgroup2, or a name=systemd hierarchy at /sys/fs/cgroup/systemd"
    fi
fi

# --- state and reporting ------------------------------------------------------
now_ms() { local t=${EPOCHREALTIME/./}; echo $((10#${t:0:-3})); }
BUDGET=${KLEAKD_NSPAWN_BUDGET:-200}
T0=$SECONDS
T0_MS=$(now_ms)
DEADLINE=$((T0 + BUDGET))
PASSED=0
FAILED=0
WORK=""
ROOT=""
MACHINE=""
NSPAWN_PID=""
CPID=""
NSPAWN_LOG=""
CG_DIRS=()
OUR_PROG_IDS=()    # BPF program ids our daemons held, seen from /proc/PID/fdinfo
TIMINGS=()
STEP=""
STEP_T0=0
CLEANED=0
FINISHED=0

pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
note() { echo "NOTE: $*"; }
indent() { sed 's/^/    | /'; }
fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL: [step $STEP] $*"
    if [ -n "$CPID" ] && alive "$CPID"; then
        echo "    context: systemctl status kleakd.service kleakd.socket; journalctl -u kleakd -u kleakd.socket (last 30):"
        # not budgeted: the budget keeps a reserve for this and the cleanup
        in_container 15 systemctl status --no-pager -n 0 kleakd.service kleakd.socket 2>&1 | indent
        in_container 15 journalctl --no-pager -o short-precise -n 30 -u kleakd.service -u kleakd.socket 2>&1 | indent
    fi
}
# check DESCRIPTION COMMAND...: PASS when the command succeeds
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
step() {
    end_step
    STEP=$1
    STEP_T0=$(now_ms)
    echo "== step $1: $2"
    budget_left >/dev/null || fatal "the time budget of ${BUDGET}s is used up (KLEAKD_NSPAWN_BUDGET)"
}
end_step() {
    [ -n "$STEP" ] && TIMINGS+=("$STEP=$(fmt_ms $(($(now_ms) - STEP_T0)))s")
    STEP=""
}
fmt_ms() { printf '%d.%01d' $(($1 / 1000)) $((($1 % 1000) / 100)); }
budget_left() {
    local left=$((DEADLINE - SECONDS))
    [ "$left" -gt 0 ] || return 1
    echo "$left"
}
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    local state
    state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# C SECONDS COMMAND...: run COMMAND inside the container, time-boxed (and
# never past the run's budget), with a clean environment. Past the budget it
# signals the main shell (C often runs in a $(...) subshell), which stops the
# run there: see on_budget.
C() {
    local t=$1 left
    shift
    left=$(budget_left) || { kill -USR1 $$; return 124; }
    [ "$t" -gt "$left" ] && t=$left
    in_container "$t" "$@"
}
in_container() {
    local t=$1
    shift
    timeout -k 5 "$t" nsenter -t "$CPID" -a \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@" </dev/null
}

# --- journal helpers (run on the host: the container's journal through C) -----
unit_prop() { C 20 systemctl show -p "$2" --value "$1"; }

# The daemon run the journal checks look at: its invocation id and main pid.
INV=""
MPID=""
current_run() {
    INV=$(unit_prop kleakd.service InvocationID)
    MPID=$(unit_prop kleakd.service ExecMainPID)
}
# journal_find NEEDLE: prints "PRIORITY<TAB>MESSAGE" of the first line the
# daemon itself (not systemd) logged in the current run that contains NEEDLE;
# fails when there is none. A line is the run's when it carries its
# invocation id, or its pid and identifier (journald may tag a line of a
# process that exits right away with the unit's previous invocation id).
journal_find() {
    C 20 journalctl --no-pager -o json "_SYSTEMD_INVOCATION_ID=$INV" + "_PID=$MPID" SYSLOG_IDENTIFIER=kleakd |
        "$PY" -c '
import json, sys
needle, inv = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    message = entry.get("MESSAGE", "")
    if isinstance(message, list):
        message = bytes(message).decode("utf-8", "replace")
    if needle in message:
        print("%s\t%s" % (entry.get("PRIORITY", "?"), message))
        if entry.get("_SYSTEMD_INVOCATION_ID") != inv:
            print("NOTE: journald tagged this line with invocation %s, not %s"
                  % (entry.get("_SYSTEMD_INVOCATION_ID", "(none)"), inv), file=sys.stderr)
        sys.exit(0)
sys.exit(1)' "$1" "$INV"
}
# wait_journal NEEDLE SECONDS: journal_find, polled; on failure, shows what
# the journal has from kleakd (on stderr)
wait_journal() {
    local end=$((SECONDS + $2))
    while :; do
        journal_find "$1" && return 0
        [ "$SECONDS" -ge "$end" ] && break
        sleep 0.25
    done
    {
        echo "    kleakd's last journal lines (pid, invocation, priority, message); looking for pid $MPID, invocation $INV:"
        C 20 journalctl --no-pager -o json -n 15 SYSLOG_IDENTIFIER=kleakd | "$PY" -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    print(e.get("_PID"), e.get("_SYSTEMD_INVOCATION_ID"), e.get("PRIORITY"), e.get("MESSAGE"))' | indent
    } >&2
    return 1
}
# wait_for SECONDS COMMAND...: poll until COMMAND succeeds
wait_for() {
    local end=$((SECONDS + $1))
    shift
    while :; do
        "$@" && return 0
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.25
    done
}
is_state() { [ "$(C 20 systemctl is-active "$1")" = "$2" ]; }

# --- BPF program bookkeeping ----------------------------------------------------
# record_daemon_progs: remember the BPF program ids the running kleakd holds
# (in OUR_PROG_IDS; this run's in LAST_IDS). Not in a $(...): it sets globals.
LAST_IDS=""
record_daemon_progs() {
    local pid
    LAST_IDS=""
    pid=$(unit_prop kleakd.service MainPID)
    [ -n "$pid" ] && [ "$pid" != 0 ] || return 1
    LAST_IDS=$(C 20 sh -c "grep -h '^prog_id:' /proc/$pid/fdinfo/* 2>/dev/null" | awk '{print $2}' | sort -un | tr '\n' ' ')
    LAST_IDS=${LAST_IDS% }
    [ -n "$LAST_IDS" ] || return 1
    # shellcheck disable=SC2206
    OUR_PROG_IDS+=($LAST_IDS)
}
# Which of OUR_PROG_IDS are still loaded (BPF ids are global: host and container agree).
our_progs_left() {
    local id left=""
    for id in "${OUR_PROG_IDS[@]}"; do
        bpftool prog show id "$id" >/dev/null 2>&1 && left+="$id "
    done
    echo "$left"
}
# kleak__ programs loaded on the host right now, as "ID NAME HOLDERS" lines,
# HOLDERS being the pids (comm) with an fd on the program or on a link to it.
kleak_progs() {
    bpftool -j prog show 2>/dev/null | "$PY" -c '
import glob, json, os, sys
progs = [p for p in json.load(sys.stdin) if p.get("name", "").startswith("kleak__")]
holders = {p["id"]: [] for p in progs}
if holders:
    for info in glob.glob("/proc/[0-9]*/fdinfo/*"):
        try:
            with open(info) as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        pid = int(line.split()[1])
                        if pid in holders:
                            proc = info.split("/")[2]
                            try:
                                comm = open("/proc/%s/comm" % proc).read().strip()
                            except OSError:
                                comm = "?"
                            entry = "%s(%s)" % (proc, comm)
                            if entry not in holders[pid]:
                                holders[pid].append(entry)
        except OSError:
            pass
for p in progs:
    print(p["id"], p["name"], ",".join(holders[p["id"]]) or "-")'
}

# --- teardown -------------------------------------------------------------------
cleanup() {
    [ "$CLEANED" = 1 ] && return 0
    CLEANED=1
    trap '' INT TERM HUP USR1
    if [ -n "$NSPAWN_PID" ] && alive "$NSPAWN_PID"; then
        if [ -n "$CPID" ] && alive "$CPID"; then
            # the connection may drop as the container goes down: ignore that
            timeout -k 5 20 nsenter -t "$CPID" -a systemctl poweroff >/dev/null 2>&1 || true
        fi
        wait_for 30 eval '! alive "$NSPAWN_PID"' || {
            echo "$prog: the container did not power off in 30s; terminating systemd-nspawn" >&2
            kill -TERM "$NSPAWN_PID" 2>/dev/null
            wait_for 10 eval '! alive "$NSPAWN_PID"' || kill -KILL "$NSPAWN_PID" 2>/dev/null
        }
        # killing the container's init kills everything in its PID namespace
        [ -n "$CPID" ] && alive "$CPID" && kill -KILL "$CPID" 2>/dev/null
        wait_for 10 eval '! alive "$NSPAWN_PID"'
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    if [ -n "$ROOT" ]; then
        local _
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            mountpoint -q "$ROOT" || break
            umount "$ROOT" 2>/dev/null || sleep 0.5
        done
        mountpoint -q "$ROOT" && { echo "$prog: $ROOT still busy; detaching it lazily" >&2; umount -l "$ROOT"; }
        mountpoint -q "$ROOT" || rmdir "$ROOT" 2>/dev/null
    fi
    local d
    for d in "${CG_DIRS[@]}"; do
        [ -d "$d" ] || continue
        # depth first; a cgroup with a process left in it stays (and is reported)
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    [ -n "$MACHINE" ] && rmdir "/run/systemd/nspawn/propagate/$MACHINE" 2>/dev/null
    [ -n "$WORK" ] && [ -d "$WORK" ] && rm -f "$NSPAWN_LOG" && rmdir "$WORK" 2>/dev/null
    return 0
}

# Step 10 and the summary: always the last thing that runs.
finish() {
    [ "$FINISHED" = 1 ] && return
    FINISHED=1
    end_step
    if [ -n "$NSPAWN_PID" ]; then
        STEP=10
        STEP_T0=$(now_ms)
        echo "== step 10: power off and clean up"
        local log_copy=""
        [ -n "$NSPAWN_LOG" ] && [ -f "$NSPAWN_LOG" ] && log_copy=$(tail -n 15 "$NSPAWN_LOG")
        cleanup
        if ! alive "$NSPAWN_PID" && { [ -z "$CPID" ] || ! alive "$CPID"; }; then
            pass "the container is gone (systemd-nspawn pid $NSPAWN_PID has exited)"
        else
            FAILED=$((FAILED + 1))
            echo "FAIL: [step 10] the container is still running (systemd-nspawn pid $NSPAWN_PID)"
            [ -n "$log_copy" ] && echo "$log_copy" | indent
        fi
        if [ -n "$ROOT" ] && { mountpoint -q "$ROOT" || [ -e "$ROOT" ]; }; then
            FAILED=$((FAILED + 1))
            echo "FAIL: [step 10] $ROOT is still there: $(findmnt -n "$ROOT" 2>/dev/null || echo 'not a mount')"
        else
            pass "nothing mounted at the temporary root $ROOT, and it is removed"
        fi
        local left_cg="" d
        for d in "${CG_DIRS[@]}"; do [ -e "$d" ] && left_cg+="$d "; done
        if [ -z "$left_cg" ]; then
            pass "no cgroups left behind (${CG_DIRS[*]:-none created})"
        else
            FAILED=$((FAILED + 1))
            echo "FAIL: [step 10] cgroups left behind: $left_cg"
        fi
        local left others orphans=""
        left=$(our_progs_left)
        if [ -z "$left" ]; then
            pass "none of the ${#OUR_PROG_IDS[@]} BPF programs our daemons loaded is still loaded"
        else
            FAILED=$((FAILED + 1))
            echo "FAIL: [step 10] BPF programs our daemons loaded are still loaded: ids $left"
        fi
        # kleak__ programs from elsewhere (other kleakd runs or tests on this host)
        # are only reported; one that no process holds is a leak: fail on it.
        others=$(kleak_progs)
        if [ -n "$others" ]; then
            sleep 1  # a program whose holder just exited is freed shortly after
            others=$(kleak_progs)
            orphans=$(awk '$3 == "-"' <<<"$others")
        fi
        if [ -z "$others" ]; then
            pass "no kleak__ BPF program is loaded on the host"
        elif [ -z "$orphans" ]; then
            pass "no kleak__ BPF program of ours is loaded on the host"
            note "kleak__ programs held by other processes on this host (not this test):"
            echo "$others" | indent
        else
            FAILED=$((FAILED + 1))
            echo "FAIL: [step 10] kleak__ BPF programs no process holds (pinned or leaked):"
            echo "$orphans" | indent
        fi
        end_step
    fi
    echo "timings (step=seconds): ${TIMINGS[*]}; total $(fmt_ms $(($(now_ms) - T0_MS)))s"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] && exit 0
    exit 1
}
fatal() {
    fail "$* (stopping here)"
    finish
}
on_budget() {
    [ "$FINISHED" = 1 ] && return
    fatal "the time budget of ${BUDGET}s is used up (KLEAKD_NSPAWN_BUDGET)"
}
on_signal() {
    FAILED=$((FAILED + 1))
    echo "FAIL: [step ${STEP:-?}] interrupted by a signal"
    finish
}
trap on_signal INT TERM HUP
trap on_budget USR1
trap 'cleanup' EXIT

# --- boot ---------------------------------------------------------------------
step 0 "boot systemd in systemd-nspawn"
WORK=$(mktemp -d /tmp/kleakd-nspawn.XXXXXX) || fatal "mktemp failed"
RUNID=${WORK##*.}
MACHINE="kleakd-test-$RUNID"
ROOT="$WORK/root"
NSPAWN_LOG="$WORK/nspawn.log"
mkdir "$ROOT" || fatal "mkdir $ROOT failed"
mount --bind / "$ROOT" || fatal "mount --bind / $ROOT failed"
if [ "${#CG_ROOTS[@]}" -gt 0 ]; then
    for r in "${CG_ROOTS[@]}"; do
        mkdir "$r/kleakd-nspawn-$RUNID" || fatal "cannot create the cgroup $r/kleakd-nspawn-$RUNID"
        CG_DIRS+=("$r/kleakd-nspawn-$RUNID")
    done
fi
# shellcheck disable=SC2054  # the commas are nspawn's list syntax
nspawn_args=(
    -D "$ROOT" --machine="$MACHINE" --volatile=overlay -b --register=no
    --console=passive --private-network
    # CAP_BPF/CAP_PERFMON to load and attach, CAP_SYSLOG for /proc/kallsyms
    # addresses: nspawn's default bounding set has none of them.
    --capability=CAP_SYS_RAWIO,CAP_BPF,CAP_PERFMON,CAP_SYSLOG
    --system-call-filter='bpf perf_event_open'
    --bind=/sys/fs/bpf
    --bind="$SOURCE_DIR"
    --bind="$BUILD_DIR"
)
[ "$HOST_SYSTEMD" = 0 ] && nspawn_args+=(--keep-unit)
[ "$HOST_SYSTEMD" = 1 ] && note "the host runs systemd: nspawn gets a transient scope (this path is less tested)"
(
    for d in "${CG_DIRS[@]}"; do echo "$BASHPID" >"$d/cgroup.procs" || exit 125; done
    exec systemd-nspawn "${nspawn_args[@]}" -- systemd.unit=basic.target
) </dev/null >"$NSPAWN_LOG" 2>&1 &
NSPAWN_PID=$!

# The container's systemd is the child of this nspawn (not a global pgrep:
# concurrent runs must not pick each other's).
find_init() {
    alive "$NSPAWN_PID" || return 2
    CPID=$(ps --ppid "$NSPAWN_PID" -o pid=,args= 2>/dev/null |
        awk '$2 ~ /\/systemd$/ && /systemd\.unit=basic\.target/ {print $1; exit}')
    [ -n "$CPID" ]
}
if ! wait_for 30 find_init; then
    CPID=""
    echo "    systemd-nspawn output:"
    tail -n 30 "$NSPAWN_LOG" | indent
    fatal "the container's systemd did not start within 30s"
fi
# systemd is exec'd before it listens on its private bus: wait for that first
# (systemctl would fail with "Failed to connect to bus").
wait_for 30 C 5 test -S /run/systemd/private || {
    tail -n 30 "$NSPAWN_LOG" | indent
    fatal "the container's systemd did not open /run/systemd/private within 30s"
}
state=$(C 60 systemctl is-system-running --wait)
case "$state" in
    running) pass "systemd booted in the container (pid $CPID on the host): $state" ;;
    degraded)
        pass "systemd booted in the container (pid $CPID on the host): $state"
        note "failed units in the container: $(C 20 systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
        ;;
    *)
        tail -n 30 "$NSPAWN_LOG" | indent
        fatal "systemd in the container is not running: '$state'"
        ;;
esac

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
for f in /usr/sbin/kleakd /usr/bin/kleakctl /usr/lib/systemd/system/kleakd.service \
    /usr/lib/systemd/system/kleakd.socket /usr/lib/sysusers.d/kleakd.conf /etc/kleakd/kleakd.conf; do
    C 10 test -f "$f" || missing+="$f "
done
if [ -z "$missing" ]; then
    pass "installed where the units expect them: /usr/sbin/kleakd, /usr/bin/kleakctl, /usr/lib/systemd/system/kleakd.{service,socket}, /usr/lib/sysusers.d/kleakd.conf, /etc/kleakd/kleakd.conf"
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
    /usr/lib/systemd/system/kleakd.socket 2>&1) && [ -z "$(grep -i kleakd <<<"$out")" ]; then
    pass "systemd-analyze verify: kleakd.service and kleakd.socket are clean"
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
if C 30 systemd-run --quiet --collect --unit=kleakd-test-pipes -p RuntimeMaxSec=600 \
    "$PY" -c 'import os, time; p = [os.pipe() for _ in range(64)]; time.sleep(600)'; then
    pass "started kleakd-test-pipes.service holding 64 pipes"
else
    fail "systemd-run of the pipe holder failed"
fi
sleep 1
leaks_cmd=(kleakctl leaks --json --top 100)
out=$(C 20 "${leaks_cmd[@]}" 2>&1)
if [ $? -eq 2 ] && grep -q 'not expected' <<<"$out"; then
    note "kleakctl rejects --json after the subcommand ('$(head -n 1 <<<"$out")'); using 'kleakctl --json leaks --top 100'"
    leaks_cmd=(kleakctl --json leaks --top 100)
fi
pipe_leaks() {
    local json n
    json=$(C 20 "${leaks_cmd[@]}") || return 1
    n=$("$PY" -c '
import json, sys
doc = json.loads(sys.stdin.read())
print(sum(s.get("outstanding", 0) for s in doc.get("sites", []) if s.get("function") == "alloc_pipe_info"))' <<<"$json") ||
        return 1
    PIPE_OUTSTANDING=$n
    [ "$n" -ge 64 ]
}
PIPE_OUTSTANDING=0
if wait_for 10 pipe_leaks; then
    pass "'${leaks_cmd[*]}': $PIPE_OUTSTANDING outstanding allocations at alloc_pipe_info sites (>= 64)"
else
    echo "    ${leaks_cmd[*]} (first 40 lines):"
    C 20 "${leaks_cmd[@]}" 2>&1 | head -n 40 | indent
    fail "kleakctl shows $PIPE_OUTSTANDING outstanding at alloc_pipe_info, want >= 64"
fi
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
C 20 systemctl stop kleakd-test-pipes.service

# --- 4: reload ----------------------------------------------------------------
step 4 "systemctl reload kleakd"
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

# --- 5: snapshots -------------------------------------------------------------
step 5 "snapshots every 2s after a reload"
C 10 sed -i -E 's/"interval":[[:space:]]*"[^"]*"/"interval": "2s"/' /etc/kleakd/kleakd.conf
if C 10 grep -q '"interval": "2s"' /etc/kleakd/kleakd.conf; then
    pass "set \"interval\": \"2s\" in /etc/kleakd/kleakd.conf (inside the container)"
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

# --- 6: stop ------------------------------------------------------------------
step 6 "watchdog, then systemctl stop kleakd"
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
if line=$(wait_journal "detached" 10); then
    pass "journal: '${line#*$'\t'}'"
else
    fail "no final 'detached' line in the journal"
fi
left=$(our_progs_left)
in_container=$(C 20 bpftool prog show | grep -c 'name kleak__')
if [ -z "$left" ]; then
    pass "bpftool prog show: none of kleakd's programs (${OUR_PROG_IDS[*]}) is loaded any more"
else
    fail "kleakd's BPF programs $left are still loaded after the stop"
fi
if [ "$in_container" -gt 0 ]; then
    note "bpftool in the container lists $in_container kleak__ programs of other processes (BPF ids are host-wide):"
    kleak_progs | indent
fi

# --- 7: socket activation -----------------------------------------------------
step 7 "socket activation through kleakd.socket"
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

# --- 8: a start that cannot attach ---------------------------------------------
step 8 "a kleakd without CAP_BPF/CAP_PERFMON ends failed"
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

# --- 9: systemd-analyze security ------------------------------------------------
step 9 "systemd-analyze security kleakd.service"
if out=$(C 60 systemd-analyze security --no-pager kleakd.service 2>&1); then
    score=$(grep 'Overall exposure level' <<<"$out")
    pass "systemd-analyze security: ${score#→ }"
    echo "    still exposed:"
    grep '✗' <<<"$out" | awk '{printf "%s (%s)  ", $2, $NF} END {print ""}' | fold -s -w 100 | indent
else
    echo "$out" | tail -n 5 | indent
    fail "systemd-analyze security failed"
fi

end_step
finish
