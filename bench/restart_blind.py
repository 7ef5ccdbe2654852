#!/usr/bin/env python3
"""bench/restart_blind.py - how long a kleakd restart is blind, with the
programs kept attached (adopted through the fd store) against today's
baseline before issue 18's second half (the links closed, the next kleakd
attaches anew), interleaved.

Usage: restart_blind.py KLEAKD KLEAKCTL [ROUNDS]      (root; default 3 rounds)

Each round: a kleakd under a fake systemd (tests/kernel/test_state_restart.py's
FakeSystemd: the notify socket and fd store), a thread opening and closing
pipes for 3 s, a SIGTERM 1 s in and the next kleakd started
with what was stored; at 5,000 pipes/s, then as fast as it can. The blind
time is the allocations kleakd did not count at alloc_pipe_info (2 a pipe)
over the churn's rate: other processes' pipes only add, so 0 is as good as
it gets. An adopting restart is blind only where a ring overflowed while no
kleakd consumed (the records dropped, printed too). Prints one line per
restart and the medians.
"""
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "kernel"))
import test_state_restart as t  # noqa: E402  (reads KLEAKD KLEAKCTL from argv too)

import tempfile  # noqa: E402


def pipe_allocs(kleakd):
    """Allocations counted at alloc_pipe_info, and records dropped (ring full)."""
    doc = kleakd.ctl("report", "--top", "100000")
    return (sum(s.get("allocs", 0) for s in doc["sites"] if s.get("function") == "alloc_pipe_info"),
            doc["losses"]["dropped"])


def churn(seconds, rate, out):
    """Pipes opened and closed, `rate` a second (0: as fast as it can)."""
    n, start = 0, time.monotonic()
    while time.monotonic() < start + seconds:
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        n += 1
        if rate and n > rate * (time.monotonic() - start):
            time.sleep(0.001)
    out.append(n)


def one_restart(work, keep_programs, rate):
    systemd = t.FakeSystemd(os.path.join(work, "notify-%d" % time.monotonic_ns()))
    first = t.Kleakd(work, notify=systemd.path)
    if not (first.wait_log("queries on") and systemd.ready.wait(20)):
        sys.exit("kleakd did not start")
    time.sleep(0.5)
    before, _ = pipe_allocs(first)
    count, seconds = [], 3.0
    load = threading.Thread(target=churn, args=(seconds, rate, count))
    load.start()
    time.sleep(1.0)
    first.stop()
    image = systemd.take()
    if not keep_programs:  # the baseline: the links closed with the process, as before
        for name in [n for n in systemd.stored if n == "kleakd-bpf"]:
            for fd in systemd.stored.pop(name):
                os.close(fd)
    second = t.Kleakd(work, notify=systemd.path, stored_fd=image, stored=systemd.handoff())
    if not second.wait_log("queries on"):
        sys.exit("the restarted kleakd did not start")
    load.join()
    time.sleep(0.5)
    seen, dropped = pipe_allocs(second)
    seen -= before
    second.stop()
    systemd.stop_service()
    made = 2 * count[0]
    alloc_rate = made / seconds
    blind_ms = max(made - seen, 0) / alloc_rate * 1000
    state = ("adopted" if keep_programs else "attached anew") + (" %d/s" % rate if rate else " full rate")
    print("%-22s churn %7d pipes, kleakd counted %8d of %8d allocations: blind %.1f ms (%d records dropped)"
          % (state, count[0], seen, made, blind_ms, dropped), flush=True)
    return blind_ms


def main():
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    for rate in (5000, 0):
        results = {True: [], False: []}
        with tempfile.TemporaryDirectory(prefix="kleakd-blind-") as work:
            for _ in range(rounds):
                for keep in (True, False):
                    results[keep].append(one_restart(work, keep, rate))
        print("median blind time at %s: adopted %.1f ms, attached anew (baseline) %.1f ms (%d rounds; load %s)"
              % ("%d pipes/s" % rate if rate else "full rate", statistics.median(results[True]),
                 statistics.median(results[False]), rounds, open("/proc/loadavg").read().split()[0]), flush=True)


if __name__ == "__main__":
    main()
