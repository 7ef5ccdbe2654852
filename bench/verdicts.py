#!/usr/bin/env python3
"""bench/verdicts.py - how good kleakd's verdicts are, on the real kernel.

Runs `kleakd serve` with the shipped verdict settings (a sample every 10 s,
15-minute window, 60 s `recent`) on a temporary socket, makes the workloads
below, polls `suspects` every 5 s and prints what it saw:

  1. leak     one pipe a second, never closed, under churn at other sites
              (kleakd-loadgen writev at full rate, pipe open/close): seconds
              from the leak's start until its site is `growing`, and its rank
              among growing sites then and at the end.
  2. plateau  3,000 pipes opened within ~3 s, then held: seconds from the
              last one until the site is no longer `growing`.
  3. churn    pipes opened and closed at a constant population of ~500 for
              the phase: polls that judged the site `growing` (target 0).
  4. mixed    no leak: process creation, pipes, sockets, tmpfs files, a
              compile, for --mixed-minutes: sites judged `growing` at any poll
              after the first two minutes (target 0), with their reasons.
  Throughout: every mas_* site's verdicts (target: never `growing`).

With --dump FILE, every poll's suspects rows and the history (every sample)
of each site judged `growing` (or not judged yet, maybe filling up) at that poll go to FILE as JSON lines, for
trying verdict rules offline on real series.

Usage: sudo bench/verdicts.py [--mixed-minutes N] [--quick] [--phases LIST] [--dump FILE]
  BUILD_DIR (default build) holds kleakd, kleakctl and bench/kleakd-loadgen.
About 17 minutes with the defaults (10 of them the mixed phase).
"""
import argparse, json, os, resource, shutil, signal, socket, subprocess, sys, tempfile, threading, time

BUILD = os.environ.get("BUILD_DIR", "build")
KLEAKD, KLEAKCTL = f"{BUILD}/kleakd", f"{BUILD}/kleakctl"
LOADGEN = f"{BUILD}/bench/kleakd-loadgen"
POLL = 5.0
DUMP = None  # a file opened by --dump


class Daemon:
    def __init__(self, tmp):
        self.sock = os.path.join(tmp, "k.sock")
        conf = os.path.join(tmp, "k.conf")
        with open(conf, "w") as f:
            json.dump({"socket": {"path": self.sock}, "snapshots": {"directory": os.path.join(tmp, "snap")},
                       "printk": {"enabled": False}}, f)
        self.log = open(os.path.join(tmp, "kleakd.log"), "w")
        self.proc = subprocess.Popen([KLEAKD, "serve", "--config", conf], stderr=self.log)
        for _ in range(200):
            if os.path.exists(self.sock):
                return
            time.sleep(0.1)
        sys.exit("kleakd did not start: see " + self.log.name)

    def ctl(self, *args):
        out = subprocess.run([KLEAKCTL, "--socket", self.sock, "--json", *args], capture_output=True, text=True,
                             timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout)

    def suspects(self, phase=""):
        result = self.ctl("suspects", "--top", "100000")
        if DUMP:
            rows = [{k: r[k] for k in ("site", "verdict", "outstanding")} for r in result["suspects"]]
            histories = {r["site"]: self.ctl("history", r["site"]) for r in result["suspects"]
                         if r["verdict"] == "growing" or r["reasons"][0].startswith("not judged yet, maybe")}
            DUMP.write(json.dumps({"phase": phase, "t": time.time(), "rows": rows, "growing": histories}) + "\n")
        return result

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def rows_of(result, function):
    return [r for r in result["suspects"] if r["function"] == function]


def growing_rank(result, function):
    growing = [r for r in result["suspects"] if r["verdict"] == "growing"]
    for i, r in enumerate(growing):
        if r["function"] == function:
            return i + 1
    return None


class Background:
    """Runs fn(stop_event) in a thread until stopped."""

    def __init__(self, fn):
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=fn, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join()


def mas_check(result, seen):
    for r in result["suspects"]:
        if r["function"].startswith("mas_"):
            seen.setdefault(r["site"], set()).add(r["verdict"])


def phase_leak(d, seconds, mas):
    churn = subprocess.Popen([LOADGEN, "writev", "--threads", "1", "--duration", str(seconds + 10)],
                             stdout=subprocess.DEVNULL)
    pipe_churn = subprocess.Popen([LOADGEN, "pipe", "--threads", "1", "--duration", str(seconds + 10)],
                                  stdout=subprocess.DEVNULL)
    held = []

    def leak(stop):
        while not stop.is_set():
            held.append(os.pipe())
            stop.wait(1.0)

    time.sleep(30)  # let the churn's sites get history of their own first
    start = time.monotonic()
    leaker = Background(leak)
    first_growing = rank_then = None
    while time.monotonic() - start < seconds:
        time.sleep(POLL)
        s = d.suspects("leak")
        mas_check(s, mas)
        rank = growing_rank(s, "alloc_pipe_info")
        if rank and first_growing is None:
            first_growing, rank_then = time.monotonic() - start, rank
    final = d.suspects()
    leaker.stop()
    churn.wait()
    pipe_churn.wait()
    rank_end = growing_rank(final, "alloc_pipe_info")
    growing_sites = [r["site"] for r in final["suspects"] if r["verdict"] == "growing"]
    print(f"leak: 1 pipe/s under writev and pipe churn: growing after "
          f"{'%.0f s' % first_growing if first_growing is not None else 'never (within %d s)' % seconds}"
          f" (rank {rank_then} among growing sites then), rank {rank_end} after {seconds} s; "
          f"{len(held)} pipes held; growing at the end: {', '.join(growing_sites) or 'none'}; "
          f"reclaimable (growing caches) at the end: "
          f"{', '.join(r['site'] for r in final['suspects'] if r['verdict'] == 'reclaimable') or 'none'}")
    for r in rows_of(final, "alloc_pipe_info"):
        print(f"  {r['site']}: {r['reasons'][0]}")
    for fds in held:
        os.close(fds[0])
        os.close(fds[1])


def phase_plateau(d, seconds, mas):
    held = []
    for i in range(3000):
        held.append(os.pipe())
        if i % 100 == 99:
            time.sleep(0.1)
    flat_since = time.monotonic()
    not_growing_after = None
    seen_growing = False
    while time.monotonic() - flat_since < seconds:
        time.sleep(POLL)
        s = d.suspects("plateau")
        mas_check(s, mas)
        growing = any(r["verdict"] == "growing" for r in rows_of(s, "alloc_pipe_info"))
        seen_growing |= growing
        if not growing and not_growing_after is None and seen_growing:
            not_growing_after = time.monotonic() - flat_since
        if growing:
            not_growing_after = None
    if not seen_growing:
        after = "never judged growing (it filled between two samples: a step, not a climb)"
    elif not_growing_after is not None:
        after = "growing while it filled; not growing %.0f s after it went flat" % not_growing_after
    else:
        after = "still growing %d s after it went flat" % seconds
    print(f"plateau: 3,000 pipes in ~3 s, then held: {after}")
    for fds in held:
        os.close(fds[0])
        os.close(fds[1])


def phase_churn(d, seconds, mas):
    def churn(stop):
        live = []
        while not stop.is_set():
            live.append(os.pipe())
            if len(live) > 500:
                r, w = live.pop(0)
                os.close(r)
                os.close(w)
            stop.wait(0.002)
        for r, w in live:
            os.close(r)
            os.close(w)

    bg = Background(churn)
    start = time.monotonic()
    polls = growing = 0
    while time.monotonic() - start < seconds:
        time.sleep(POLL)
        s = d.suspects("churn")
        mas_check(s, mas)
        polls += 1
        growing += any(r["verdict"] == "growing" for r in rows_of(s, "alloc_pipe_info"))
    bg.stop()
    print(f"churn: ~500 pipes alive, opened and closed continuously for {seconds} s: judged growing in "
          f"{growing} of {polls} polls (target 0)")


def mixed_step(i, tmpfs, file_bytes):
    """One round of the mixed no-leak load (bench/soak.py uses it too): a
    process, a socket pair, a pipe, a tmpfs file written (a third removed)."""
    subprocess.run(["true"])
    a, b = socket.socketpair()
    a.send(b"x" * 100)
    b.recv(100)
    a.close()
    b.close()
    r, w = os.pipe()
    os.write(w, b"y")
    os.close(r)
    os.close(w)
    path = os.path.join(tmpfs, f"f{i % 50}")
    with open(path, "w") as f:
        f.write("z" * file_bytes)
    if i % 3 == 0:
        os.unlink(path)


def phase_mixed(d, seconds, mas, tmp):
    src = os.path.join(tmp, "prog.c")
    with open(src, "w") as f:
        f.write("#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n")
    tmpfs = os.path.join(tmp, "tmpfs")
    os.makedirs(tmpfs, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tmpfs], check=True)

    def work(stop):
        i = 0
        while not stop.is_set():
            i += 1
            mixed_step(i, tmpfs, 4096)
            if i % 40 == 0:
                subprocess.run(["cc", "-O2", "-o", os.path.join(tmp, "prog"), src])
            stop.wait(0.01)

    bg = Background(work)
    start = time.monotonic()
    wrongly = {}
    polls = 0
    while time.monotonic() - start < seconds:
        time.sleep(POLL)
        s = d.suspects("mixed")
        mas_check(s, mas)
        if time.monotonic() - start < 120:
            continue
        polls += 1
        for r in s["suspects"]:
            if r["verdict"] == "growing":
                wrongly.setdefault(r["site"], r["reasons"][0])
    bg.stop()
    subprocess.run(["umount", tmpfs])
    print(f"mixed: no leak, {seconds // 60} min of processes, pipes, sockets, tmpfs files and compiles: "
          f"{len(wrongly)} sites judged growing at some poll of {polls} after the first 2 min (target 0)")
    for site, reason in sorted(wrongly.items()):
        print(f"  {site}: {reason}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixed-minutes", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="shorter phases (a smoke run, not the figures)")
    p.add_argument("--phases", default="leak,plateau,churn,mixed", help="which phases, comma-separated")
    p.add_argument("--dump", help="write every poll's rows and the growing sites' histories here (JSON lines)")
    a = p.parse_args()
    global DUMP
    DUMP = open(a.dump, "w") if a.dump else None
    phases = a.phases.split(",")
    if os.geteuid() != 0:
        sys.exit("verdicts.py: run as root (BPF)")
    for f in (KLEAKD, KLEAKCTL, LOADGEN):
        if not os.access(f, os.X_OK):
            sys.exit(f"verdicts.py: no {f} (scripts/build.sh, or set BUILD_DIR)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    leak_s, plateau_s, churn_s = (120, 100, 60) if a.quick else (150, 150, 180)
    mixed_s = 150 if a.quick else a.mixed_minutes * 60
    print(f"kleakd verdicts: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"kernel {os.uname().release}; defaults: sample every 10 s, 15 min window, recent 60 s")
    mas = {}
    tmp = tempfile.mkdtemp(prefix="kleakd-verdicts-")
    try:
        for name, phase, secs in (("leak", phase_leak, leak_s), ("plateau", phase_plateau, plateau_s),
                                  ("churn", phase_churn, churn_s)):
            if name not in phases:
                continue
            d = Daemon(tmp)
            time.sleep(2)
            try:
                phase(d, secs, mas)
            finally:
                d.stop()
        d = Daemon(tmp) if "mixed" in phases else None
        try:
            if d:
                phase_mixed(d, mixed_s, mas, tmp)
        finally:
            if d:
                d.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    growing_mas = sorted(s for s, v in mas.items() if "growing" in v)
    untracked = sorted(s for s, v in mas.items() if "untracked-frees" in v)
    print(f"mas_* sites seen: {len(mas)}; ever growing: {len(growing_mas)} (target 0) {' '.join(growing_mas)}; "
          f"judged untracked-frees at some poll: {len(untracked)}")
    for s, v in sorted(mas.items()):
        print(f"  {s}: {', '.join(sorted(v))}")


if __name__ == "__main__":
    main()
