#!/usr/bin/env python3
"""bench/soak.py - kleakd under sustained mixed load, many clients and reloads.

Runs `kleakd serve` (default allocators, printk capture on when the kernel
allows it) on a throw-away config and a temporary socket, so it coexists with
any other kleakd on the host, and for --minutes keeps it busy with:

  load      bench's kleakd-loadgen at a moderate duty cycle (writev 4 s in
            every 10 s, pipe churn 2 s in every 10 s), process creation,
            socketpairs, pipes opened and closed, batches of 200-800 pipes
            held for 20 s and released, files written and removed on a
            tmpfs, and a line written to /dev/kmsg every 5 s (printk capture
            is part of the load).
  clients   100 threads, each with its own Unix-socket connection speaking
            proto/PROTOCOL.md directly: 90 keep one connection for the whole
            run (the harder case), 10 connect afresh for every query. Each
            sends a mix of stats / leaks / suspects / caches / history /
            snapshot / printk queries, 0.3-2 s apart, and counts requests
            sent, answered ok, answered with an error (by code) and
            unanswered (no reply within --reply-timeout, a reset, a close,
            a connection refused).
            Slots: the daemon's socket.max_clients is 64 by default, the last
            one kept for an administrator. This script raises it to 128 so
            that all 100 clients plus its own sampler are admitted; a
            `not_permitted` refusal would then be a daemon fault and is
            counted as unanswered.
  reloads   every 10 s the config file is rewritten with printk.lines
            alternating 10000 / 10001 and snapshots.retention 60 / 59 (a
            harmless change that the reload really applies), then SIGHUP;
            a reload counts as ok when `stats`'s config shows the new value.
  samples   every 10 s: kleakd's VmRSS and RssAnon (/proc/PID/status) and
            its `stats`: dropped (total and per CPU), late, records and
            records/s, tracker_bytes, clients, queries; and the host's
            steal per CPU (/proc/stat). A sample whose drops rose prints a
            line at once: when, which CPUs, the steal, the ring readers'
            copies and the load in those 10 s. bench/cpu_steal.py runs
            throughout for the worst 100 ms of steal.
  priority  `kleakd serve` raises itself to nice -10 (as the unit's Nice=-10
            does, and trace and record do) when started above it; the
            header prints the nice it ran at. --daemon-nice N starts it at
            N first (below -10 it stays there).

Prints a table every minute (RSS at the sample and the median of the
minute's samples) and a summary: RSS at the end of warm-up
(--warmup, default 5 min, a quarter of shorter runs) against the end and the
maximum, its slope per 10 min after warm-up (least squares), drops, queries
answered / sent, reloads ok. Exits 1 if any record was dropped, any query
went unanswered, the daemon exited, or RSS grew more than 10 % after
warm-up: the median of the last minute's samples against the median of the
first minute after warm-up (single samples move by tens of MiB with the
replies in flight).

Usage: sudo bench/soak.py [--minutes 30] [--warmup MIN] [--clients 100] [--daemon-nice N]
  BUILD_DIR (default build) holds kleakd and bench/kleakd-loadgen.
"""
import argparse, json, os, random, resource, shutil, signal, socket, subprocess, sys, tempfile, threading, time

from verdicts import mixed_step  # bench/verdicts.py: the same no-leak load

BUILD = os.environ.get("BUILD_DIR", "build")
KLEAKD = f"{BUILD}/kleakd"
LOADGEN = f"{BUILD}/bench/kleakd-loadgen"
SAMPLE_S = 10.0
RELOAD_S = 10.0
MIB = 1024.0 * 1024.0


def config_doc(sock, tmp, variant, printk):
    return {"socket": {"path": sock, "max_clients": 128},
            "snapshots": {"directory": os.path.join(tmp, "snap"), "retention": 60 - variant},
            "printk": {"enabled": printk, "lines": 10000 + variant}}


def write_config(path, doc):
    with open(path + ".new", "w") as f:
        json.dump(doc, f)
    os.rename(path + ".new", path)


class Conn:
    """One protocol connection: a request line out, its reply line back."""

    def __init__(self, path, timeout):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        self.next_id = 1

    def ask(self, op, args=None):
        rid = self.next_id
        self.next_id += 1
        req = {"v": 1, "id": rid, "op": op}
        if args is not None:
            req["args"] = args
        self.s.sendall((json.dumps(req, separators=(",", ":")) + "\n").encode())
        line = self.f.readline()
        if not line.endswith(b"\n"):
            raise ConnectionResetError("connection closed before the reply")
        reply = json.loads(line)
        if reply.get("id") not in (rid, None):
            raise RuntimeError(f"reply id {reply.get('id')} for request {rid}")
        return reply

    def close(self):
        try:
            self.f.close()
            self.s.close()
        except OSError:
            pass


class Daemon:
    def __init__(self, tmp, nice=None):
        self.tmp = tmp
        self.nice = nice
        self.sock = os.path.join(tmp, "k.sock")
        self.conf = os.path.join(tmp, "k.conf")
        self.log_path = os.path.join(tmp, "kleakd.log")
        self.printk = True
        self.variant = 0
        if not self._start():
            # printk capture could not attach here: run without it.
            self.printk = False
            if not self._start():
                sys.exit("kleakd did not start: see " + self.log_path)

    def _start(self):
        write_config(self.conf, config_doc(self.sock, self.tmp, self.variant, self.printk))
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([KLEAKD, "serve", "--config", self.conf], stderr=self.log,
                                     stdout=self.log,
                                     preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        self.pid = self.proc.pid
        for _ in range(600):
            if self.proc.poll() is not None:
                return False
            if os.path.exists(self.sock):
                try:
                    Conn(self.sock, 5).close()
                    return True
                except OSError:
                    pass
            time.sleep(0.1)
        self.proc.kill()
        self.proc.wait()
        return False

    def reload(self):
        self.variant ^= 1
        write_config(self.conf, config_doc(self.sock, self.tmp, self.variant, self.printk))
        self.proc.send_signal(signal.SIGHUP)
        return 10000 + self.variant

    def status(self):
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = self.ok = self.err = self.unanswered = 0
        self.err_codes = {}
        self.unanswered_why = {}
        self.by_op = {}
        self.latencies = []
        self.max_latency = (0.0, "")

    def add(self, op, outcome, detail, latency):
        with self.lock:
            self.sent += 1
            o = self.by_op.setdefault(op, [0, 0, 0])
            if outcome == "ok":
                self.ok += 1
                o[0] += 1
            elif outcome == "err":
                self.err += 1
                o[1] += 1
                self.err_codes[detail] = self.err_codes.get(detail, 0) + 1
            else:
                self.unanswered += 1
                o[2] += 1
                self.unanswered_why[detail] = self.unanswered_why.get(detail, 0) + 1
            if latency is not None:
                self.latencies.append(latency)
                if latency > self.max_latency[0]:
                    self.max_latency = (latency, op)

    def snap(self):
        with self.lock:
            return self.sent, self.ok, self.err, self.unanswered


OPS = [("stats", 30), ("leaks", 25), ("suspects", 15), ("caches", 10), ("history", 10), ("printk", 7),
       ("snapshot", 3)]


def pick_request(rng, sites):
    op = rng.choices([o for o, _ in OPS], weights=[w for _, w in OPS])[0]
    if op == "leaks":
        args = {"top": rng.choice([10, 20, 100]), "sort": rng.choice(["bytes", "count"])}
        if rng.random() < 0.2:
            args["min_age"] = rng.choice(["1s", "30s", "5m"])
        return op, args
    if op == "suspects":
        return op, {"top": rng.choice([20, 100])}
    if op == "caches":
        return op, {"top": rng.choice([0, 20])}
    if op == "history":
        return op, {"site": rng.choice(sites) if sites else "alloc_pipe_info", "resolution": rng.randint(0, 1)}
    if op == "printk":
        return op, {"limit": 100}
    return op, None


def client(n, path, persistent, stop, counts, timeout, sites):
    rng = random.Random(n)
    conn = None
    stop.wait(rng.uniform(0, 2))
    while not stop.is_set():
        op, args = pick_request(rng, sites)
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = Conn(path, timeout)
            reply = conn.ask(op, args)
            lat = time.monotonic() - t0
            if reply.get("ok"):
                counts.add(op, "ok", None, lat)
                if op == "leaks":
                    names = [s["site"] for s in reply["result"]["sites"][:20]]
                    if names:
                        sites[:] = names
            else:
                code = reply.get("error", {}).get("code", "?")
                if code == "not_permitted":  # a refused slot: the query was not answered
                    counts.add(op, "unanswered", "not_permitted", None)
                    conn.close()
                    conn = None
                else:
                    counts.add(op, "err", code, lat)
        except socket.timeout:
            counts.add(op, "unanswered", "timeout", None)
            if conn:
                conn.close()
            conn = None
        except (OSError, ValueError, RuntimeError) as e:
            counts.add(op, "unanswered", type(e).__name__, None)
            if conn:
                conn.close()
            conn = None
        if not persistent and conn is not None:
            conn.close()
            conn = None
        stop.wait(rng.uniform(0.3, 2.0))
    if conn:
        conn.close()


class Load:
    """The mixed load: each part a thread that stops with the run."""

    def __init__(self, tmp):
        self.stop = threading.Event()
        self.tmp = tmp
        self.procs_lock = threading.Lock()
        self.procs = []
        self.stats = {"loadgen_runs": 0, "processes": 0, "pipes_held_max": 0, "kmsg_lines": 0, "files": 0}
        self.tmpfs = os.path.join(tmp, "tmpfs")
        os.makedirs(self.tmpfs, exist_ok=True)
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", self.tmpfs]).returncode == 0
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self.loadgen, self.mixed, self.holder, self.kmsg)]
        for t in self.threads:
            t.start()

    def run_loadgen(self, mode, seconds):
        p = subprocess.Popen([LOADGEN, mode, "--threads", "1", "--duration", str(seconds)],
                             stdout=subprocess.DEVNULL)
        with self.procs_lock:
            self.procs.append(p)
        p.wait()
        with self.procs_lock:
            self.procs.remove(p)
        self.stats["loadgen_runs"] += 1

    def loadgen(self):
        # A moderate duty cycle: writev 4 s of every 10, pipe churn 2 s.
        while not self.stop.is_set():
            self.run_loadgen("writev", 4)
            if self.stop.wait(1):
                break
            self.run_loadgen("pipe", 2)
            self.stop.wait(3)

    def mixed(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            mixed_step(i, self.tmpfs, 8192)
            self.stats["processes"] += 1
            self.stats["files"] += 1
            self.stop.wait(0.02)

    def holder(self):
        rng = random.Random(7)
        while not self.stop.is_set():
            held = [os.pipe() for _ in range(rng.randint(200, 800))]
            self.stats["pipes_held_max"] = max(self.stats["pipes_held_max"], len(held))
            self.stop.wait(20)
            for r, w in held:
                os.close(r)
                os.close(w)
            self.stop.wait(5)

    def kmsg(self):
        try:
            f = open("/dev/kmsg", "w")
        except OSError:
            return
        n = 0
        while not self.stop.wait(5):
            n += 1
            try:
                f.write(f"kleakd-soak: line {n}\n")
                f.flush()
                self.stats["kmsg_lines"] += 1
            except OSError:
                pass
        f.close()

    def end(self):
        self.stop.set()
        with self.procs_lock:
            for p in self.procs:
                p.terminate()
        for t in self.threads:
            t.join(timeout=30)
        if self.mounted:
            subprocess.run(["umount", self.tmpfs])


def steal_ms():
    """Per-CPU steal so far, in ms (/proc/stat counts USER_HZ ticks)."""
    hz = os.sysconf("SC_CLK_TCK")
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3] != " ":
                out.append(int(line.split()[8]) * 1000 // hz)
    return out


def other_kleakds(own):
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != own:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    n += f.read().strip() == "kleakd"
            except OSError:
                pass
    return n


def slope_per_10min(points):
    """Least-squares slope of (t seconds, MiB) in MiB per 10 minutes."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (v - mv) for t, v in points) / den * 600


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--warmup", type=float, default=None, help="minutes (default 5, a quarter of shorter runs)")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--daemon-nice", type=int, default=None, help="nice increment for kleakd (the unit: -10)")
    p.add_argument("--reply-timeout", type=float, default=30.0, help="seconds before a query is unanswered")
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak.py: run as root (BPF)")
    for f in (KLEAKD, LOADGEN):
        if not os.access(f, os.X_OK):
            sys.exit(f"soak.py: no {f} (scripts/build.sh, or set BUILD_DIR)")
    warmup = a.warmup if a.warmup is not None else min(5.0, a.minutes / 4)
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    tmp = tempfile.mkdtemp(prefix="kleakd-soak-")
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load0 = os.getloadavg()
    d = Daemon(tmp, a.daemon_nice)
    steal_out = open(os.path.join(tmp, "steal.json"), "w+")
    steal_mon = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                               "cpu_steal.py")], stdout=steal_out)
    print(f"kleakd soak: {started}, {os.cpu_count()} CPUs, kernel {os.uname().release}, load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start; kleakd pid {d.pid}, printk capture "
          f"{'on' if d.printk else 'off (could not attach)'}; {a.minutes:g} min, warm-up {warmup:g} min, "
          f"{a.clients} clients (max_clients 128), reload every {RELOAD_S:.0f} s; daemon nice "
          f"{os.getpriority(os.PRIO_PROCESS, d.pid)}; other kleakd processes on the host: {other_kleakds(d.pid)}",
          flush=True)
    counts = Counts()
    stop = threading.Event()
    sites = []
    load = Load(tmp)
    clients = [threading.Thread(target=client, args=(i, d.sock, i % 10 != 0, stop, counts, a.reply_timeout,
                                                     sites), daemon=True) for i in range(a.clients)]
    for t in clients:
        t.start()
    sampler = Conn(d.sock, a.reply_timeout)
    reloads = {"sent": 0, "ok": 0, "failed": 0}
    pending_reload = None
    samples = []  # (t, rss_kib, anon_kib, stats)
    died = None
    sampler_errors = 0
    start = time.monotonic()
    next_sample = start + SAMPLE_S
    next_reload = start + RELOAD_S
    end = start + a.minutes * 60
    loads = [load0]
    print(f"{'min':>4} {'RSS MiB':>8} {'median':>6} {'anon':>6} {'drops':>8} {'late':>6} {'records':>12} {'rec/s':>8} "
          f"{'tracker MiB':>11} {'clients':>7} {'q sent':>8} {'ok':>8} {'err':>5} {'unans':>5} {'reloads':>9} "
          f"{'load1':>5}", flush=True)
    last_minute = 0
    prev = None  # (t, stats, steal) of the last sample
    drop_events = []
    max_kleakds = 0
    try:
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_sample, next_reload) - time.monotonic()))
            if d.proc.poll() is not None:
                died = d.proc.returncode
                break
            now = time.monotonic()
            if now >= next_reload:
                next_reload += RELOAD_S
                pending_reload = d.reload()
                reloads["sent"] += 1
                # The change applied: stats's config shows the new printk.lines.
                ok = False
                for _ in range(20):
                    time.sleep(0.1)
                    try:
                        r = sampler.ask("stats")
                        if r["result"]["config"]["printk"]["lines"] == pending_reload:
                            ok = True
                            break
                    except (OSError, ValueError, KeyError, RuntimeError):
                        sampler_errors += 1
                        sampler.close()
                        sampler = Conn(d.sock, a.reply_timeout)
                reloads["ok" if ok else "failed"] += 1
            if now >= next_sample:
                next_sample += SAMPLE_S
                st = d.status()
                try:
                    stats = sampler.ask("stats")["result"]
                except (OSError, ValueError, KeyError, RuntimeError):
                    sampler_errors += 1
                    sampler.close()
                    sampler = Conn(d.sock, a.reply_timeout)
                    continue
                t = now - start
                samples.append((t, st["VmRSS"], st["RssAnon"], stats))
                steal = steal_ms()
                max_kleakds = max(max_kleakds, other_kleakds(d.pid))
                if prev and stats["dropped"] > prev[1]["dropped"]:
                    per_cpu = [x - y for x, y in zip(stats["dropped_per_cpu"], prev[1]["dropped_per_cpu"])]
                    ev = (f"drops +{stats['dropped'] - prev[1]['dropped']} between {prev[0]:.0f} s and {t:.0f} s "
                          f"({time.strftime('%H:%M:%S', time.gmtime(time.time() - (now - prev[0])))}-"
                          f"{time.strftime('%H:%M:%S UTC', time.gmtime())}): per CPU {per_cpu}; steal "
                          f"{[x - y for x, y in zip(steal, prev[2])]} ms; ring readers copied "
                          f"{(stats['ring_readers']['copied_bytes'] - prev[1]['ring_readers']['copied_bytes']) / MIB:.0f}"
                          f" MiB; records/s {(stats['records'] - prev[1]['records']) / (t - prev[0]):,.0f}; load "
                          f"{os.getloadavg()[0]:.2f}; other kleakd processes {other_kleakds(d.pid)}")
                    drop_events.append(ev)
                    print("  " + ev, flush=True)
                prev = (t, stats, steal)
                minute = int(t // 60)
                if minute > last_minute or time.monotonic() + SAMPLE_S > end:
                    last_minute = minute
                    s, ok_, err, un = counts.snap()
                    l1 = os.getloadavg()[0]
                    loads.append(os.getloadavg())
                    rate = stats["records_per_second"]
                    minute_rss = sorted(x[1] for x in samples if x[0] > t - 60)
                    print(f"{t / 60:4.1f} {st['VmRSS'] / 1024:8.1f} {minute_rss[len(minute_rss) // 2] / 1024:6.1f} "
                          f"{st['RssAnon'] / 1024:6.1f} {stats['dropped']:8d} "
                          f"{stats['late']:6d} {stats['records']:12d} {rate:8.0f} "
                          f"{stats['tracker_bytes'] / MIB:11.1f} {stats['clients']:7d} {s:8d} {ok_:8d} {err:5d} "
                          f"{un:5d} {reloads['ok']:4d}/{reloads['sent']:<4d} {l1:5.2f}", flush=True)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=a.reply_timeout + 5)
        load.end()
        final_stats = None
        if died is None and d.proc.poll() is None:
            try:
                final_stats = sampler.ask("stats")["result"]
            except (OSError, ValueError, KeyError, RuntimeError):
                sampler_errors += 1
        sampler.close()
        rc = d.stop()
        steal_mon.send_signal(signal.SIGTERM)
        steal_mon.wait()
        steal_out.seek(0)
        try:
            steal_doc = json.loads(steal_out.read() or "null")
        except ValueError:
            steal_doc = None
        if died is None and rc not in (0, None):
            died = f"exit status {rc} at SIGTERM"
    with open(d.log_path) as f:
        log = f.read()
    shutil.rmtree(tmp, ignore_errors=True)

    # Summary.
    fails = []
    print()
    if died is not None:
        fails.append(f"daemon exited ({died})")
    ws = [x for x in samples if x[0] >= warmup * 60]
    if ws:
        w0 = ws[0]
        rss_w, rss_end = w0[1] / 1024, samples[-1][1] / 1024
        rss_max = max(x[1] for x in ws) / 1024
        anon_w, anon_end = w0[2] / 1024, samples[-1][2] / 1024
        slope = slope_per_10min([(x[0], x[1] / 1024) for x in ws])
        aslope = slope_per_10min([(x[0], x[2] / 1024) for x in ws])
        # RSS moves by a few MiB from one sample to the next (reply buffers of the queries in flight):
        # the growth is judged on the medians of the first minute after warm-up and the last minute.
        med = lambda xs: sorted(xs)[len(xs) // 2]
        first_min = med([x[1] for x in ws if x[0] < ws[0][0] + 60]) / 1024
        last_min = med([x[1] for x in ws if x[0] > samples[-1][0] - 60]) / 1024
        growth = (last_min - first_min) / first_min * 100
        print(f"RSS: {rss_w:.1f} MiB at the end of warm-up ({w0[0] / 60:.1f} min), {rss_end:.1f} MiB at the end; "
              f"median of the minute after warm-up {first_min:.1f} MiB, of the last minute {last_min:.1f} MiB "
              f"({growth:+.1f} %); max after warm-up {rss_max:.1f} MiB, max over the run "
              f"{max(x[1] for x in samples) / 1024:.1f} MiB; slope after warm-up {slope:+.2f} MiB per 10 min "
              f"(least squares over {len(ws)} samples)")
        print(f"  anonymous: {anon_w:.1f} -> {anon_end:.1f} MiB, slope {aslope:+.2f} MiB per 10 min; "
              f"tracker {w0[3]['tracker_bytes'] / MIB:.1f} -> {samples[-1][3]['tracker_bytes'] / MIB:.1f} MiB, "
              f"outstanding {w0[3]['outstanding']} -> {samples[-1][3]['outstanding']}")
        # The tracker grows with the kernel's outstanding allocations (a host's page cache fills with
        # buffer heads and dentries): RSS less tracker_bytes is the daemon's own part.
        own = lambda x: x[1] / 1024 - x[3]["tracker_bytes"] / MIB
        own_first = med([own(x) for x in ws if x[0] < ws[0][0] + 60])
        own_last = med([own(x) for x in ws if x[0] > samples[-1][0] - 60])
        print(f"  RSS less tracker_bytes (medians): {own_first:.1f} -> {own_last:.1f} MiB "
              f"({(own_last - own_first) / own_first * 100:+.1f} %), slope "
              f"{slope_per_10min([(x[0], own(x)) for x in ws]):+.2f} MiB per 10 min")
        if growth > 10:
            fails.append(f"RSS grew {growth:.1f} % after warm-up (medians of the first and last minute)")
    else:
        print("RSS: no samples after warm-up")
        fails.append("no samples after warm-up")
    last = final_stats or (samples[-1][3] if samples else None)
    if last:
        per_cpu = last.get("dropped_per_cpu", [])
        elapsed = samples[-1][0] if samples else 0
        print(f"records: {last['records']:,} ({last['records_per_second']:,.0f}/s over the uptime); dropped "
              f"{last['dropped']} (per CPU {per_cpu}); late {last['late']}; undecodable {last['undecodable']}; "
              f"ring readers copied {last['ring_readers']['copied_bytes']:,} bytes")
        q = last["queries"]
        print(f"daemon's queries: {q}; clients at the end {last['clients']}")
        if last["dropped"]:
            fails.append(f"{last['dropped']} records dropped")
        for ev in drop_events:
            print("  " + ev)
    s, ok_, err, un = counts.snap()
    lat = sorted(counts.latencies)
    pct = (lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000) if lat else (lambda f: 0.0)
    print(f"queries: {ok_ + err:,} answered of {s:,} sent ({ok_:,} ok, {err:,} errors {counts.err_codes or ''}), "
          f"{un} unanswered {counts.unanswered_why or ''}; latency p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, "
          f"max {counts.max_latency[0] * 1000:.0f} ms ({counts.max_latency[1]})")
    print("  by op (ok/err/unanswered): " + ", ".join(f"{o} {v[0]}/{v[1]}/{v[2]}" for o, v in
                                                      sorted(counts.by_op.items())))
    if un:
        fails.append(f"{un} queries unanswered")
    log_reloads = log.count("configuration reloaded")
    rejected = log.count("reload rejected")
    print(f"reloads: {reloads['ok']} ok of {reloads['sent']} sent (the new value seen in stats), the daemon logged "
          f"{log_reloads} 'configuration reloaded' and {rejected} rejected; sampler reconnects {sampler_errors}")
    if reloads["failed"]:
        fails.append(f"{reloads['failed']} reloads not seen applied")
    print(f"load: {load.stats}; host load average (1 min) {min(l[0] for l in loads):.2f}-"
          f"{max(l[0] for l in loads):.2f}, at the end {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")
    print(f"host steal (bench/cpu_steal.py): {json.dumps(steal_doc)}; other kleakd processes seen at a sample: "
          f"up to {max_kleakds}")
    for line in log.splitlines():
        if any(w in line for w in ("error", "warn", "critical")) and "reload" not in line:
            print("  daemon log: " + line)
    print("RESULT: " + ("FAIL: " + "; ".join(fails) if fails else "PASS: no drop, every query answered, "
                                                                     "RSS flat after warm-up, the daemon ran throughout"))
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
