# shellcheck shell=bash
# Boots systemd in systemd-nspawn on a throwaway overlay of the host root, for
# the tests that drive kleakd as a real service: tests/systemd/run-nspawn-test.sh
# (cmake --install) and tests/package/run-package-test.sh (the .deb). Sourced,
# not run. A script using it:
#
#   prog=...; usage() {...}                 its name and usage line
#   source .../nspawn-lib.sh
#   nspawn_prerequisites                    root, systemd-nspawn, systemd, tools, BTF
#   ... its own prerequisites ...
#   nspawn_cgroups                          where the container's cgroups go
#   nspawn_init BUDGET BUDGET_VARIABLE FINAL_STEP
#                                           counters, the time budget, traps
#   nspawn_boot STEP DIR...                 step STEP: boot, binding DIRs in
#   step N "what"; C SECONDS cmd...; pass/fail/check/note ...
#   finish                                  step FINAL_STEP: power off, clean up,
#                                           "N passed, M failed", exit status
#
# Output: "PASS: ..." / "FAIL: [step N] ..." per check, "NOTE: ..." for
# information, and a final "N passed, M failed"; exit 0 only when nothing
# failed. Every wait is time-boxed, and the whole run stays inside BUDGET
# seconds, which must leave time for cleanup before the caller's timeout.
# A script may define nspawn_cleanup_hook: cleanup runs it last (at most once).

prog=${prog:-${0##*/}}  # the sourcing script sets it
die() { echo "$prog: $*" >&2; exit 1; }
refuse() {  # a missing prerequisite: fail, or skip loudly when allowed
    if [ "${KLEAKD_ALLOW_KERNEL_SKIP:-}" = 1 ]; then
        echo "SKIP: $* (KLEAKD_ALLOW_KERNEL_SKIP=1)"
        exit 77
    fi
    die "$*"
}

# --- prerequisites ------------------------------------------------------------
nspawn_prerequisites() {
    [ "$(id -u)" -eq 0 ] || refuse "must run as root: it boots systemd in a container and loads BPF programs"
    command -v systemd-nspawn >/dev/null ||
        refuse "systemd-nspawn is missing: run scripts/install-deps.sh (it installs systemd-container)"
    [ -x /usr/lib/systemd/systemd ] || refuse "systemd is not installed: run scripts/install-deps.sh"
    local tool
    for tool in nsenter mount umount mountpoint findmnt bpftool timeout; do
        command -v "$tool" >/dev/null || refuse "$tool is missing: run scripts/install-deps.sh"
    done
    PY=/usr/bin/python3  # the system Python: the container has the same one
    [ -x "$PY" ] || refuse "$PY is missing: run scripts/install-deps.sh"
    [ -r /sys/kernel/btf/vmlinux ] || refuse "this kernel has no BTF (/sys/kernel/btf/vmlinux): kleakd cannot load"
}

# cgroups. Without systemd as PID 1, nspawn --keep-unit puts "payload" and
# "supervisor" below its own cgroup; give each run its own parent cgroup so
# concurrent runs cannot share (or delete) each other's.
nspawn_cgroups() {
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
}

# --- state and reporting ------------------------------------------------------
now_ms() { local t=${EPOCHREALTIME/./}; echo $((10#${t:0:-3})); }

# nspawn_init BUDGET BUDGET_VARIABLE FINAL_STEP: the run's state, its time
# budget (BUDGET seconds from now; BUDGET_VARIABLE is the environment variable
# that sets it, named in messages) and the number of the final step.
nspawn_init() {
    BUDGET=$1
    BUDGET_VARIABLE=$2
    FINAL_STEP=$3
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
    INV=""
    MPID=""
    LAST_IDS=""
    trap on_signal INT TERM HUP
    trap on_budget USR1
    trap 'cleanup' EXIT
}

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
    budget_left >/dev/null || fatal "the time budget of ${BUDGET}s is used up ($BUDGET_VARIABLE)"
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

# The daemon run the journal checks look at: its invocation id and main pid
# (INV, MPID).
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
# kleakd's programs (kleak__*, or kleak_raw__* where they attach as raw_tp)
# loaded on the host right now, as "ID NAME HOLDERS" lines,
# HOLDERS being the pids (comm) with an fd on the program or on a link to it.
kleak_progs() {
    bpftool -j prog show 2>/dev/null | "$PY" -c '
import glob, json, os, sys
progs = [p for p in json.load(sys.stdin) if p.get("name", "").startswith(("kleak__", "kleak_raw__"))]
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
    if declare -F nspawn_cleanup_hook >/dev/null; then nspawn_cleanup_hook; fi
    return 0
}

# Step FINAL_STEP and the summary: always the last thing that runs.
finish() {
    [ "$FINISHED" = 1 ] && return
    FINISHED=1
    end_step
    if [ -n "$NSPAWN_PID" ]; then
        STEP=$FINAL_STEP
        STEP_T0=$(now_ms)
        echo "== step $FINAL_STEP: power off and clean up"
        local log_copy=""
        [ -n "$NSPAWN_LOG" ] && [ -f "$NSPAWN_LOG" ] && log_copy=$(tail -n 15 "$NSPAWN_LOG")
        cleanup
        if ! alive "$NSPAWN_PID" && { [ -z "$CPID" ] || ! alive "$CPID"; }; then
            pass "the container is gone (systemd-nspawn pid $NSPAWN_PID has exited)"
        else
            FAILED=$((FAILED + 1))
            echo "FAIL: [step $FINAL_STEP] the container is still running (systemd-nspawn pid $NSPAWN_PID)"
            [ -n "$log_copy" ] && echo "$log_copy" | indent
        fi
        if [ -n "$ROOT" ] && { mountpoint -q "$ROOT" || [ -e "$ROOT" ]; }; then
            FAILED=$((FAILED + 1))
            echo "FAIL: [step $FINAL_STEP] $ROOT is still there: $(findmnt -n "$ROOT" 2>/dev/null || echo 'not a mount')"
        else
            pass "nothing mounted at the temporary root $ROOT, and it is removed"
        fi
        local left_cg="" d
        for d in "${CG_DIRS[@]}"; do [ -e "$d" ] && left_cg+="$d "; done
        if [ -z "$left_cg" ]; then
            pass "no cgroups left behind (${CG_DIRS[*]:-none created})"
        else
            FAILED=$((FAILED + 1))
            echo "FAIL: [step $FINAL_STEP] cgroups left behind: $left_cg"
        fi
        local left others orphans=""
        left=$(our_progs_left)
        if [ -z "$left" ]; then
            pass "none of the ${#OUR_PROG_IDS[@]} BPF programs our daemons loaded is still loaded"
        else
            FAILED=$((FAILED + 1))
            echo "FAIL: [step $FINAL_STEP] BPF programs our daemons loaded are still loaded: ids $left"
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
            echo "FAIL: [step $FINAL_STEP] kleak__ BPF programs no process holds (pinned or leaked):"
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
    fatal "the time budget of ${BUDGET}s is used up ($BUDGET_VARIABLE)"
}
on_signal() {
    FAILED=$((FAILED + 1))
    echo "FAIL: [step ${STEP:-?}] interrupted by a signal"
    finish
}

# --- boot ---------------------------------------------------------------------
# nspawn_boot STEP DIR...: step STEP, "boot systemd in systemd-nspawn". The
# container's root is a non-recursive bind of the host's /, with a volatile
# overlay (writes vanish at power-off), and it mounts its own /tmp: each DIR
# is bound in at its own path, so it may live anywhere (CI clones under /tmp).
# Sets WORK, ROOT, MACHINE, NSPAWN_PID and CPID (the container's systemd, as
# seen from the host); anything that goes wrong is fatal.
nspawn_boot() {
    local boot_step=$1 r d state
    shift
    step "$boot_step" "boot systemd in systemd-nspawn"
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
    local nspawn_args=(
        -D "$ROOT" --machine="$MACHINE" --volatile=overlay -b --register=no
        --console=passive --private-network
        # CAP_BPF/CAP_PERFMON to load and attach, CAP_SYSLOG for /proc/kallsyms
        # addresses: nspawn's default bounding set has none of them.
        --capability=CAP_SYS_RAWIO,CAP_BPF,CAP_PERFMON,CAP_SYSLOG
        --system-call-filter='bpf perf_event_open'
        --bind=/sys/fs/bpf
    )
    for d in "$@"; do nspawn_args+=(--bind="$d"); done
    [ "$HOST_SYSTEMD" = 0 ] && nspawn_args+=(--keep-unit)
    [ "$HOST_SYSTEMD" = 1 ] && note "the host runs systemd: nspawn gets a transient scope (this path is less tested)"
    (
        for d in "${CG_DIRS[@]}"; do echo "$BASHPID" >"$d/cgroup.procs" || exit 125; done
        exec systemd-nspawn "${nspawn_args[@]}" -- systemd.unit=basic.target
    ) </dev/null >"$NSPAWN_LOG" 2>&1 &
    NSPAWN_PID=$!

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
}
# The container's systemd is the child of this nspawn (not a global pgrep:
# concurrent runs must not pick each other's).
find_init() {
    alive "$NSPAWN_PID" || return 2
    CPID=$(ps --ppid "$NSPAWN_PID" -o pid=,args= 2>/dev/null |
        awk '$2 ~ /\/systemd$/ && /systemd\.unit=basic\.target/ {print $1; exit}')
    [ -n "$CPID" ]
}

# A leak made inside the container: a transient unit holds 64 pipes open (each
# pipe allocates in alloc_pipe_info), and `kleakctl leaks --json` must show
# at least 64 outstanding allocations at alloc_pipe_info sites. The holder
# keeps running; stop kleakd-test-pipes.service when done.
pipe_leaks() {
    local json n
    json=$(C 20 kleakctl leaks --json --top 100) || return 1
    n=$("$PY" -c '
import json, sys
doc = json.loads(sys.stdin.read())
print(sum(s.get("outstanding", 0) for s in doc.get("sites", []) if s.get("function") == "alloc_pipe_info"))' <<<"$json") ||
        return 1
    PIPE_OUTSTANDING=$n
    [ "$n" -ge 64 ]
}
check_pipe_leak() {
    if C 30 systemd-run --quiet --collect --unit=kleakd-test-pipes -p RuntimeMaxSec=600 \
        "$PY" -c 'import os, time; p = [os.pipe() for _ in range(64)]; time.sleep(600)'; then
        pass "started kleakd-test-pipes.service holding 64 pipes"
    else
        fail "systemd-run of the pipe holder failed"
    fi
    sleep 1
    PIPE_OUTSTANDING=0
    if wait_for 10 pipe_leaks; then
        pass "kleakctl leaks --json: $PIPE_OUTSTANDING outstanding allocations at alloc_pipe_info sites (>= 64)"
    else
        echo "    kleakctl leaks --json --top 100 (first 40 lines):"
        C 20 kleakctl leaks --json --top 100 2>&1 | head -n 40 | indent
        fail "kleakctl shows $PIPE_OUTSTANDING outstanding at alloc_pipe_info, want >= 64"
    fi
}
