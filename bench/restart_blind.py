#!/usr/bin/env python3
"""bench/restart_blind.py - how long a kleakd restart is blind, with the
programs kept attached (adopted through the fd store) against a baseline,
interleaved: without BASELINE_KLEAKD the links closed, the next kleakd
attaching anew (as before issue 18's second half); with it, that build
adopting too (e.g. main's, before the rings were read from the new
process's first moment and the old one's tail was handed over).

Usage: restart_blind.py KLEAKD KLEAKCTL [ROUNDS [BASELINE_KLEAKD]]   (root; default 3 rounds)

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


def one_restart(work, keep_programs, rate, kleakd=None):
    t.KLEAKD = kleakd or sys.argv[1]
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
        for name in [n for n in systemd.stored if n in ("kleakd-bpf", "kleakd-ring-tail")]:
            for fd in systemd.stored.pop(name):
                os.close(fd)
    second = t.Kleakd(work, notify=systemd.path, stored_fd=image, stored=systemd.handoff())
    if not second.wait_log("queries on"):
        sys.exit("the restarted kleakd did not start")
    load.join()
    time.sleep(0.5)
    seen, dropped = pipe_allocs(second)
    seen -= before
    unread = second.ctl("stats")["state"].get("unread_ns")  # None: not adopted, or a build without it
    tail = next((l.split("ring tail: ")[1].split(" read")[0] for l in first.text().splitlines() if "ring tail: " in l), "none")
    second.stop()
    systemd.stop_service()
    made = 2 * count[0]
    alloc_rate = made / seconds
    blind_ms = max(made - seen, 0) / alloc_rate * 1000
    state = (("adopted" if keep_programs else "attached anew") + (" (baseline)" if kleakd else "")
             + (" %d/s" % rate if rate else " full rate"))
    print("%-33s churn %7d pipes, kleakd counted %8d of %8d allocations: blind %.1f ms (%d records dropped; "
          "rings unread %s ms; tail %s)"
          % (state, count[0], seen, made, blind_ms, dropped,
             "%.1f" % (unread / 1e6) if unread is not None else "?", tail), flush=True)
    return blind_ms, dropped


def main():
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    baseline = sys.argv[4] if len(sys.argv) > 4 else None
    # (keep the programs, binary): this build adopting, then the baseline.
    modes = [(True, None), (True, baseline) if baseline else (False, None)]
    for rate in (5000, 0):
        results = {m: [] for m in modes}
        with tempfile.TemporaryDirectory(prefix="kleakd-blind-") as work:
            for _ in range(rounds):
                for keep, binary in modes:
                    results[(keep, binary)].append(one_restart(work, keep, rate, binary))
        (blind, dropped), (base_blind, base_dropped) = (
            (statistics.median(b for b, _ in results[m]), statistics.median(d for _, d in results[m])) for m in modes)
        print("median at %s: this build adopting %.1f ms blind, %d dropped; %s %.1f ms blind, %d dropped "
              "(%d rounds; load %s)"
              % ("%d pipes/s" % rate if rate else "full rate", blind, dropped,
                 "the baseline adopting" if baseline else "attached anew (baseline)", base_blind, base_dropped,
                 rounds, open("/proc/loadavg").read().split()[0]), flush=True)


if __name__ == "__main__":
    main()
