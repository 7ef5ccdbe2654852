#!/usr/bin/env python3
"""bench/restart_outstanding.py - a clean restart at many outstanding
allocations (issue 18: restart time at 1M outstanding), with a full-rate
pipe churn running through it.

Usage: restart_outstanding.py KLEAKD KLEAKCTL LOADGEN [PIPES]   (root; default 150000 pipes held)

A kleakd under tests/kernel/test_state_restart.py's fake systemd; `loadgen
leak --count PIPES` holds pipes (several slab allocations each) until
kleakd's outstanding count settles; then a churn of pipes as fast as it can,
SIGTERM 1 s in, the next kleakd started with what was stored. Prints the
outstanding count, how long the old process took from SIGTERM to exit, how
long the new one took from exec to "queries on", the image's size and load
time, how long the rings went unread, the tail handed over, and the records
dropped (losses.dropped, over the whole run) and the churn's missed
allocations at alloc_pipe_info (blind time, as bench/restart_blind.py).
"""
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "kernel"))
import test_state_restart as t  # noqa: E402  (reads KLEAKD KLEAKCTL from argv too)
import restart_blind as rb  # noqa: E402


def main():
    loadgen = sys.argv[3]
    pipes = int(sys.argv[4]) if len(sys.argv) > 4 else 150000
    with tempfile.TemporaryDirectory(prefix="kleakd-restart-1m-") as work:
        systemd = t.FakeSystemd(os.path.join(work, "notify"))
        first = t.Kleakd(work, notify=systemd.path)
        if not (first.wait_log("queries on") and systemd.ready.wait(20)):
            sys.exit("kleakd did not start")
        # Several holders: a process may not raise its fd limit past the hard one here.
        per = 9000
        holders = [subprocess.Popen([loadgen, "leak", "--count", str(min(per, pipes - i)), "--duration", "0"],
                                    stdout=subprocess.PIPE, text=True) for i in range(0, pipes, per)]
        for holder in holders:
            holder.stdout.readline()  # "holding N pipes"
        last, outstanding = -1, 0
        while outstanding != last:  # settled: two equal readings a second apart
            time.sleep(1.0)
            last, outstanding = outstanding, first.ctl("stats")["totals"]["outstanding"]
        before, dropped_before = rb.pipe_allocs(first)
        tracer = None
        if os.environ.get("STRACE_OLD"):  # where the old process's stop goes: timestamps of its writes
            tracer = subprocess.Popen(["strace", "-ttt", "-f", "-e", "trace=write,exit_group,munmap", "-o",
                                       os.environ["STRACE_OLD"], "-p", str(first.proc.pid)])
            time.sleep(0.5)
        count, seconds = [], 3.0
        load = threading.Thread(target=rb.churn, args=(seconds, 0, count))
        load.start()
        time.sleep(1.0)
        stop_at = time.monotonic()
        old_exit = first.stop()
        stopped = time.monotonic() - stop_at
        image = systemd.take()
        start_at = time.monotonic()
        second = t.Kleakd(work, notify=systemd.path, stored_fd=image, stored=systemd.handoff())
        if not second.wait_log("queries on", timeout=60):
            sys.exit("the restarted kleakd did not start")
        started = time.monotonic() - start_at
        load.join()
        time.sleep(0.5)
        seen, dropped = rb.pipe_allocs(second)
        dropped -= dropped_before
        state = second.ctl("stats")["state"]
        made = 2 * count[0]
        stored = next((l for l in first.text().splitlines() if "state stored with systemd" in l), "(no image stored)")
        print("old kleakd exit status %s" % old_exit)
        print("%d outstanding; old kleakd SIGTERM to exit %.0f ms (%s), new kleakd exec to queries %.0f ms, image "
              "loaded in %.0f ms; rings unread %.1f ms, tail %.1f MB; churn %d pipes: missed %d of %d allocations, "
              "%d records dropped (load %s)"
              % (outstanding, stopped * 1000, stored.split("info: ")[-1], started * 1000, state["load_ms"], (state.get("unread_ns") or 0) / 1e6, state.get("tail_bytes", 0) / 1e6,
                 count[0], max(made - (seen - before), 0), made, dropped, open("/proc/loadavg").read().split()[0]),
              flush=True)
        for holder in holders:
            holder.terminate()
            holder.wait()
        second.stop()
        systemd.stop_service()


if __name__ == "__main__":
    main()
