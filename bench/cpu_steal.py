#!/usr/bin/env python3
"""bench/cpu_steal.py - how long the hypervisor kept this VM's vCPUs from running.

Samples the steal column of /proc/stat every 20 ms until SIGTERM or SIGINT,
then prints one line of JSON: per CPU the steal over the whole run and the
most stolen in any 100 ms window, in ms. A vCPU the host deschedules for
100 ms stops whatever guest thread runs on it; when that is kleakd's
consumer while the other vCPU keeps tracing, that CPU's ring fills without
being drained: the scripts print this next to drops and query latencies so
a loss or a slow answer can be told apart from a slow daemon.

Usage: bench/cpu_steal.py > FILE &  ...  kill -TERM $!; wait $!
"""
import json
import signal
import sys
import time
from collections import deque

WINDOW = 5  # samples of 20 ms: 100 ms


def steal_ticks():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3] != " ":
                fields = line.split()
                out[fields[0][3:]] = int(fields[8])
    return out


def main():
    tick_ms = 1000 / 100  # USER_HZ
    start = last = steal_ticks()
    recent = {cpu: deque(maxlen=WINDOW) for cpu in start}
    worst = {cpu: 0 for cpu in start}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.02)
        now = steal_ticks()
        for cpu in now.keys() & last.keys():
            recent[cpu].append(now[cpu] - last[cpu])
            worst[cpu] = max(worst[cpu], sum(recent[cpu]))
        last = now
    total = {cpu: (last[cpu] - start[cpu]) * tick_ms for cpu in start if cpu in last}
    json.dump({"total_ms": total, "worst_100ms_window_ms": {c: w * tick_ms for c, w in worst.items()}}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
