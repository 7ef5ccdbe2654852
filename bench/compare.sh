#!/usr/bin/env bash
# bench/compare.sh - what kleakd costs the traced machine, in one run.
#
# 1. Throughput of a kmalloc/kfree loop (kleakd-loadgen writev: one kmalloc
#    and one kfree per iteration), interleaved A B C D A B C D ... for
#    --rounds rounds:
#      A untraced
#      B `kleakd trace` attached (the product; tp_btf where the kernel allows)
#      R `kleakd trace --attach raw_tp` (the path older kernels take, e.g.
#        Debian 12's 6.1 and 6.12; left out with --no-raw-tp)
#      C `kleakd trace --no-emit` (programs attached, nothing written: the floor)
#      D bench/peer-memleak.bt under bpftrace (the peer)
#      O `kleakd trace` of another build (--baseline DIR: an older commit's
#        build directory, to measure a change against it in the same run)
#      S `kleakd trace --stacks all` (--stacks: a kernel stack per allocation;
#        --stack-shifts "0 2 4": one run per shift N, a stack for 1 in 2^N
#        pointers, `--stack-sample-shift N`)
#      T bench/peer-memleak-stacks.bt (--stacks, with the peer: a stack per
#        allocation, as bcc's memleak keeps; memleak-bpfcc itself needs
#        kernel headers to build its programs)
#    B runs with the default stacks mode, suspects: with no growing site,
#    what the daemon's default costs the hot path.
#    Medians, and paired ratios: each traced run over the untraced run of its
#    own round, so slow drifts of a shared machine cancel out. Two rates per
#    run: wall (iterations per second of the run) and CPU (iterations per
#    second of CPU the loader itself got, CLOCK_THREAD_CPUTIME_ID, which
#    includes the BPF programs run inside its system calls): on a machine
#    shared with other work the CPU rate is the steadier measure of what
#    tracing costs the traced code; on an idle machine they agree. For kleakd:
#    records/s, drops, late records, the daemon's CPU% (utime+stime from
#    /proc/PID/stat over the load) and RSS.
# 2. Zero loss: two loader threads at full rate with the default 8M ring,
#    writev churn and pipe churn (pipes free through RCU: bursts in softirq,
#    and frees that nest inside kleakd's own kmem_cache_free program).
# 3. Overflow: a burst into 64K rings while kleakd's loop thread is stopped
#    for 60 ms (bench/loop_stall.py): exact drop counts and the advice.
# 4. Cost per event: one run each with sysctl kernel.bpf_stats_enabled=1
#    (restored afterwards): ns per program run for kleakd, the floor, the peer.
#
# Usage: bench/compare.sh [--rounds N] [--duration SECONDS] [--no-peer] [--no-raw-tp] [--quick]
#                         [--baseline BUILD_DIR] [--loop writev|pipe|pipebuf] [--kleakd-args "ARGS"]
#                         [--stacks] [--stack-shifts "N..."] [--throughput-only]
#   --loop pipe: section 1 loops pipe()+close() instead of writev (slab
#   caches: kmem_cache_alloc/free of files, inodes, dentries, RCU frees).
#   --loop pipebuf: 64 KiB written into a pipe and read back (16 buffer
#   pages allocated and freed per iteration: the page-heavy loop).
#   --kleakd-args: extra arguments for this build's `kleakd trace` runs (B, R,
#   C; not the baseline's), e.g. "--allocators all" to trace every family.
#   --throughput-only: section 1 alone.
#   BUILD_DIR (default build) holds kleakd and bench/kleakd-loadgen.
# Needs root and a BTF kernel; bpftrace for the peer (scripts/install-deps.sh).
# About 3 minutes with the defaults (5 rounds of 3 s).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5
duration=3
peer=1
raw_tp=1
quick=0
baseline_build=
loop_mode=writev
kleakd_args=()
stacks=0
stack_shifts=(0)
throughput_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --no-peer) peer=0; shift ;;
    --no-raw-tp) raw_tp=0; shift ;;
    --quick) quick=1; rounds=2; duration=2; shift ;;
    --baseline) baseline_build=$2; shift 2 ;;
    --loop) loop_mode=$2; shift 2 ;;
    --kleakd-args) read -r -a kleakd_args <<< "$2"; shift 2 ;;
    --stacks) stacks=1; shift ;;
    --stack-shifts) stacks=1; read -r -a stack_shifts <<< "$2"; shift 2 ;;
    --throughput-only) throughput_only=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

build=${BUILD_DIR:-build}
kleakd=$build/kleakd
loadgen=$build/bench/kleakd-loadgen
peer_script=bench/peer-memleak.bt
[ "$(id -u)" -eq 0 ] || { echo "compare.sh: run as root (BPF)" >&2; exit 1; }
[ -x "$kleakd" ] || { echo "compare.sh: no $kleakd (scripts/build.sh, or set BUILD_DIR)" >&2; exit 1; }
if [ -n "$baseline_build" ]; then
  baseline_kleakd=$baseline_build/kleakd
  [ -x "$baseline_kleakd" ] || { echo "compare.sh: no $baseline_kleakd (--baseline)" >&2; exit 1; }
fi
case "$loop_mode" in writev|pipe|pipebuf) ;; *) echo "compare.sh: --loop writev|pipe|pipebuf" >&2; exit 2 ;; esac
tmp=$(mktemp -d /tmp/kleakd-compare-XXXXXX)
if [ ! -x "$loadgen" ]; then
  loadgen=$tmp/loadgen
  cc -O2 -pthread -o "$loadgen" bench/loadgen.c
fi
if [ "$peer" = 1 ] && ! command -v bpftrace > /dev/null; then
  echo "compare.sh: bpftrace not found: the peer is left out (apt-get install bpftrace)" >&2
  peer=0
fi

stats_before=$(cat /proc/sys/kernel/bpf_stats_enabled)
started_pids=()
cleanup() {
  for pid in "${started_pids[@]}"; do kill -KILL "$pid" 2> /dev/null || true; done
  echo "$stats_before" > /proc/sys/kernel/bpf_stats_enabled
  rm -rf "$tmp"
}
trap cleanup EXIT

clk_tck=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (fields 14 and 15; the command
# name in field 2 may hold spaces, so count from the closing parenthesis).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }

# Starts a tracer in the background; waits until its log says it is attached.
# $1: text to wait for, $2: stdout file, $3: stderr file, rest: the command.
tracer_pid=
start_tracer() {
  local ready=$1 out=$2 err=$3
  shift 3
  env --default-signal=INT,TERM "$@" > "$out" 2> "$err" &
  tracer_pid=$!
  started_pids+=("$tracer_pid")
  for _ in $(seq 1 200); do
    if grep -q "$ready" "$err" "$out" 2> /dev/null; then sleep 0.3; return 0; fi
    kill -0 "$tracer_pid" 2> /dev/null || break
    sleep 0.1
  done
  echo "compare.sh: $* did not start:" >&2
  cat "$err" >&2
  exit 1
}
stop_tracer() {
  kill -INT "$tracer_pid"
  wait "$tracer_pid" || { echo "compare.sh: tracer exited with $?" >&2; cat "$2" >&2; exit 1; }
}

# One measurement; appends a line to $tmp/results.tsv:
# round config iter_per_s records drops late cpu_seconds load_seconds rss_kb hwm_kb iter_per_cpu_s
# steal_ms (the most any vCPU was stolen by the host in a 100 ms window, bench/cpu_steal.py)
results=$tmp/results.tsv
mode=writev  # the loader's mode for measure()
measure() {
  local round=$1 config=$2 threads=$3
  shift 3
  local pid="" t0=0 t1=0 line rate cpu_rate start end rss=0 hwm=0 json
  case "$config" in
    untraced) ;;
    peer) start_tracer 'peer-memleak: tracing' "$tmp/peer.out" "$tmp/peer.err" bpftrace "$peer_script"; pid=$tracer_pid ;;
    peerstacks) start_tracer 'peer-memleak-stacks: tracing' "$tmp/peer.out" "$tmp/peer.err" bpftrace \
                  bench/peer-memleak-stacks.bt; pid=$tracer_pid ;;
    baseline) start_tracer 'tracing' "$tmp/k.json" "$tmp/k.err" "$baseline_kleakd" trace --json --interval 3600 "$@"
              pid=$tracer_pid ;;
    *) start_tracer 'tracing' "$tmp/k.json" "$tmp/k.err" "$kleakd" trace --json --interval 3600 "${kleakd_args[@]}" "$@"
       pid=$tracer_pid ;;
  esac
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  python3 bench/cpu_steal.py > "$tmp/last-steal.json" &
  local steal_pid=$!
  started_pids+=("$steal_pid")
  start=$(now)
  line=$("$loadgen" "$mode" --threads "$threads" --duration "$duration")
  kill -TERM "$steal_pid"
  wait "$steal_pid" || true  # an empty file prints as "?" below
  rate=$(sed -E 's/.* iter_per_s=([0-9]+).*/\1/' <<< "$line")
  cpu_rate=$(sed -E 's/.* iter_per_cpu_s=([0-9]+).*/\1/' <<< "$line")
  end=$(now)
  if [ -n "$pid" ]; then
    t1=$(cpu_ticks "$pid")
    rss=$(status_kb "$pid" VmRSS)
    hwm=$(status_kb "$pid" VmHWM)
    stop_tracer "$pid" "$tmp/k.err"
  fi
  local records=0 drops=0 late=0
  if [ "$config" != untraced ] && [ "$config" != peer ] && [ "$config" != peerstacks ]; then
    json=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); l=d["losses"]; print(d["run"]["records"], l["dropped"], l["late"])' "$tmp/k.json")
    read -r records drops late <<< "$json"
    cp "$tmp/k.json" "$tmp/last-$config.json"
  fi
  local steal
  steal=$(python3 bench/steal_summary.py worst "$tmp/last-steal.json")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$config" "$rate" "$records" "$drops" "$late" \
    "$(echo "($t1 - $t0) / $clk_tck" | bc -l)" "$(echo "$end - $start" | bc -l)" "$rss" "$hwm" "$cpu_rate" "$steal" >> "$results"
}

echo "kleakd compare: $(date -u '+%Y-%m-%d %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) CPUs, kernel $(uname -r)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== 1. $loop_mode loop, 1 thread, $rounds rounds of ${duration}s, interleaved =="
[ -n "$baseline_build" ] && echo "baseline: $baseline_kleakd ($("$baseline_kleakd" --version 2> /dev/null | head -1))"
[ ${#kleakd_args[@]} -gt 0 ] && echo "this build's kleakd trace runs with: ${kleakd_args[*]}"
mode=$loop_mode
configs=(untraced kleakd)
[ -n "$baseline_build" ] && configs+=(baseline)
[ "$raw_tp" = 1 ] && configs+=(rawtp)
configs+=(noemit)
[ "$peer" = 1 ] && configs+=(peer)
if [ "$stacks" = 1 ]; then
  for shift_n in "${stack_shifts[@]}"; do configs+=("stacksall$shift_n"); done
fi
[ "$stacks" = 1 ] && [ "$peer" = 1 ] && configs+=(peerstacks)
for round in $(seq 1 "$rounds"); do
  for config in "${configs[@]}"; do
    case "$config" in
      noemit) measure "$round" noemit 1 --no-emit ;;
      rawtp) measure "$round" rawtp 1 --attach raw_tp ;;
      stacksall*) measure "$round" "$config" 1 --stacks all --stack-sample-shift "${config#stacksall}" ;;
      *) measure "$round" "$config" 1 ;;
    esac
  done
  printf '  round %s done\n' "$round"
done
mode=writev

python3 - "$results" << 'EOF'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r[1], {})[int(r[0])] = r
names = {"untraced": "untraced", "kleakd": "kleakd trace", "rawtp": "kleakd trace --attach raw_tp",
         "baseline": "baseline build's kleakd trace",
         "noemit": "kleakd trace --no-emit (floor)",
         "peer": "bpftrace peer-memleak.bt",
         "peerstacks": "bpftrace peer-memleak-stacks.bt"}
stack_configs = sorted((c for c in by if c.startswith("stacksall")), key=lambda c: int(c[9:]))
for c in stack_configs:
    names[c] = "kleakd trace --stacks all" + (f" --stack-sample-shift {c[9:]}" if c != "stacksall0" else "")
base = by["untraced"]
def column(c, i):
    rates = [float(r[i]) for r in by[c].values()]
    ratios = [float(r[i]) / float(base[k][i]) for k, r in by[c].items() if k in base]
    return rates, ratios
print()
print(f"{'':34} {'--- wall: iterations/s of the run ---':^52}   {'--- CPU: iterations/s of loader CPU ---':^40}")
print(f"{'configuration':34} {'median':>11} {'min':>11} {'max':>11} {'ratio':>7} {'min-max':>11}   "
      f"{'median':>11} {'ratio':>7} {'min-max':>11}")
for c in ["untraced", "kleakd", "baseline", "rawtp", "noemit", "peer"] + stack_configs + ["peerstacks"]:
    if c not in by: continue
    wall, wall_ratio = column(c, 2)
    cpu, cpu_ratio = column(c, 10)
    print(f"{names[c]:34} {st.median(wall):11,.0f} {min(wall):11,.0f} {max(wall):11,.0f} {st.median(wall_ratio):7.3f} "
          f"{min(wall_ratio):5.3f}-{max(wall_ratio):.3f}   {st.median(cpu):11,.0f} {st.median(cpu_ratio):7.3f} "
          f"{min(cpu_ratio):5.3f}-{max(cpu_ratio):.3f}")
if "peer" in by and "kleakd" in by:
    wins = sum(1 for k in by["kleakd"] if k in by["peer"] and float(by["kleakd"][k][2]) > float(by["peer"][k][2]))
    print(f"kleakd beat the peer in {wins} of {len(by['kleakd'])} rounds (wall)")
if "baseline" in by and "kleakd" in by:
    for i, what in ((2, "wall"), (10, "CPU")):
        pairs = [float(r[i]) / float(by["baseline"][k][i]) for k, r in by["kleakd"].items() if k in by["baseline"]]
        print(f"this build over the baseline, paired per round ({what}): median {st.median(pairs):.3f}, "
              f"{min(pairs):.3f}-{max(pairs):.3f}")
if "rawtp" in by and "kleakd" in by:
    pairs = [float(by["rawtp"][k][2]) / float(r[2]) for k, r in by["kleakd"].items() if k in by["rawtp"]]
    print(f"raw_tp over default, paired per round (wall): median {st.median(pairs):.3f}, "
          f"{min(pairs):.3f}-{max(pairs):.3f}")
for i, what in ((2, "wall"), (10, "CPU")):
    v = [float(r[i]) for r in base.values()]
    print(f"noise: untraced {what} rates vary by {st.pstdev(v) / st.mean(v) * 100:.1f}% (coefficient of variation)")
print()
print(f"{'kleakd':34} {'records/s':>13} {'drops':>8} {'late':>6} {'daemon CPU%':>12} {'records/CPU-s':>14} {'RSS MiB':>8}"
      f" {'steal ms':>9}")
for c in ["kleakd", "baseline", "rawtp", "noemit"] + stack_configs:
    if c not in by: continue
    for k, r in sorted(by[c].items()):
        rec, drops, late, cpu, secs, rss = int(r[3]), int(r[4]), int(r[5]), float(r[6]), float(r[7]), int(r[8])
        per_cpu = f"{rec / cpu:14,.0f}" if cpu > 0 and rec > 0 else f"{'-':>14}"
        print(f"{names[c] + ' #' + str(k):34} {rec / secs:13,.0f} {drops:8} {late:6} {100 * cpu / secs:12.1f} "
              f"{per_cpu} {rss / 1024:8.1f} {r[11]:>9}")
if "peer" in by:
    cpus = [100 * float(r[6]) / float(r[7]) for r in by["peer"].values()]
    print(f"{'bpftrace (user space)':34} {'':13} {'':8} {'':6} {st.median(cpus):12.1f}")
EOF
[ "$throughput_only" = 1 ] && exit 0

echo
echo "== 2. zero loss: 2 loader threads at full rate, default ring (8M per CPU); pipebuf: 64 KiB pipe writes =="
zl_duration=$([ "$quick" = 1 ] && echo 3 || echo 8)
saved_duration=$duration
duration=$zl_duration
for mode in writev pipe pipebuf; do
  : > "$results"
  measure 1 kleakd 2
  steal=$(python3 bench/steal_summary.py line "$tmp/last-steal.json")
  python3 - "$results" "$tmp/last-kleakd.json" "$mode" "$steal" << 'EOF'
import json, sys
r = open(sys.argv[1]).read().split("\t")
d = json.load(open(sys.argv[2]))
l = d["losses"]
rec, cpu, secs = int(r[3]), float(r[6]), float(r[7])
misses = l.get("recursion_misses", 0)
print(f"{sys.argv[3]}: loader {float(r[2]):,.0f} iterations/s over 2 threads; kleakd {rec:,} records "
      f"({rec / secs:,.0f}/s), ring drops {l['dropped']} (per CPU {l['dropped_per_cpu']}, per family "
      f"{l.get('dropped_per_family', [])}), late {l['late']}, "
      f"recursion misses {misses}")
print(f"  daemon CPU {100 * cpu / secs:.1f}% = {rec / cpu:,.0f} records per CPU-second; RSS {int(r[8]) / 1024:.1f} MiB "
      f"(peak {int(r[9]) / 1024:.1f} MiB)")
print(f"  host steal: {sys.argv[4]} (a vCPU the host stops, stops the consumer on it while the other CPU's ring fills)")
print("  zero loss: " + ("MET" if l["dropped"] == 0 and misses == 0 else
                         "ring drops MET, but the kernel skipped nested runs" if l["dropped"] == 0 else "NOT MET"))
EOF
done
mode=writev
duration=$saved_duration
echo

echo "== 3. overflow: a 100 ms burst of 2 loader threads into 64K rings, kleakd's loop stopped for 60 ms of it =="
# While the loop runs, the ring readers keep even 64K rings from overflowing;
# stopped (bench/loop_stall.py, as a host stopping its vCPU), the rings and
# the readers' copies (twice a ring) fill. With bpf_stats on, every program
# run is counted: records + drops + the events BPF filters out by design
# (NULL and ZERO_SIZE_PTR frees) = runs.
echo 1 > /proc/sys/kernel/bpf_stats_enabled
start_tracer 'tracing' "$tmp/o.json" "$tmp/o.err" "$kleakd" trace --json --interval 3600 --buffer-size 64K
sleep 0.5
"$loadgen" writev --threads 2 --duration 0.1 > /dev/null &
burst=$!
python3 bench/loop_stall.py "$tracer_pid" 60 1 0
wait "$burst"
sleep 0.3
stop_tracer "$tracer_pid" "$tmp/o.err"
echo "$stats_before" > /proc/sys/kernel/bpf_stats_enabled
python3 - "$tmp/o.json" << 'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
l = d["losses"]
runs = sum(p.get("run_cnt", 0) for p in l.get("programs", []))
records = d["run"]["records"]
print(f"drops per CPU {l['dropped_per_cpu']} (total {l['dropped']}); records {records}; late {l['late']}")
if runs:
    print(f"program runs {runs} = records {records} + drops {l['dropped']} + filtered in BPF "
          f"{runs - records - l['dropped']} (NULL/ZERO_SIZE_PTR frees)")
if l["suggested_buffer_size"]:
    print(f"advice: --buffer-size {l['suggested_buffer_size'] >> 10}K per CPU would have held the burst "
          f"(now {l['buffer_size'] >> 10}K)")
else:
    print("no advice (nothing dropped)")
EOF

echo
echo "== 4. cost per event (kernel.bpf_stats_enabled=1 for these runs only; it adds its own clock reads) =="
echo 1 > /proc/sys/kernel/bpf_stats_enabled
ns_per_run() {
  python3 - "$@" << 'EOF'
import json, sys
path, label, source = sys.argv[1:4]
if source == "kleakd":
    programs = [(p["name"], p["run_cnt"], p["run_time_ns"]) for p in json.load(open(path))["losses"].get("programs", [])]
else:  # bpftool prog show --json: the peer's programs on kmem tracepoints
    names = ("kmalloc", "kfree", "kmem_cache_allo", "kmem_cache_free")  # bpftrace names them by event, cut to 15
    programs = [(p["name"], p.get("run_cnt", 0), p.get("run_time_ns", 0)) for p in json.load(open(path))
                if p.get("type") == "tracepoint" and p.get("name") in names]
parts = [f"{name} {ns / cnt:.0f} ns" for name, cnt, ns in programs if cnt]
print(f"{label:34} " + (", ".join(parts) if parts else "no runs counted"))
EOF
}
cost_configs=(kleakd)
[ -n "$baseline_build" ] && cost_configs+=(baseline)
[ "$raw_tp" = 1 ] && cost_configs+=(rawtp)
cost_configs+=(noemit)
for config in "${cost_configs[@]}"; do
  args=()
  label="kleakd trace"
  binary=$kleakd
  if [ "$config" = noemit ]; then args=(--no-emit); label="kleakd trace --no-emit (floor)"; fi
  if [ "$config" = rawtp ]; then args=(--attach raw_tp); label="kleakd trace --attach raw_tp"; fi
  if [ "$config" = baseline ]; then binary=$baseline_kleakd; label="baseline build's kleakd trace"; fi
  start_tracer 'tracing' "$tmp/c.json" "$tmp/c.err" "$binary" trace --json --interval 3600 "${args[@]}"
  "$loadgen" writev --duration 2 > /dev/null
  "$loadgen" pipe --duration 1 > /dev/null  # kmem_cache_alloc/free too
  stop_tracer "$tracer_pid" "$tmp/c.err"
  ns_per_run "$tmp/c.json" "$label" kleakd
done
if [ "$peer" = 1 ]; then
  start_tracer 'peer-memleak: tracing' "$tmp/peer.out" "$tmp/peer.err" bpftrace "$peer_script"
  "$loadgen" writev --duration 2 > /dev/null
  bpftool prog show --json > "$tmp/progs.json"
  stop_tracer "$tracer_pid" "$tmp/peer.err"
  ns_per_run "$tmp/progs.json" "bpftrace peer-memleak.bt" bpftool
fi
echo "$stats_before" > /proc/sys/kernel/bpf_stats_enabled

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
