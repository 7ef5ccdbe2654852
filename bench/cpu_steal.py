#!/usr/bin/env python3
"""bench/cpu_steal.py - how long the hypervisor kept this VM's vCPUs from running.

Samples the steal column of /proc/stat about every 20 ms until SIGTERM or
SIGINT, then prints one line of JSON: per CPU the steal over the whole run
and the most stolen in any window of about 100 ms (5 samples), in ms; the
kernel counts steal in clock ticks (10 ms at USER_HZ 100). A vCPU the host
deschedules for 100 ms stops whatever guest thread runs on it; when that is
kleakd's consumer while the other vCPU keeps tracing, that CPU's ring fills
without being drained. compare.sh and scale.sh print this next to drops and
query latencies, so a loss or a slow answer can be told from a slow daemon.

Usage: bench/cpu_steal.py > FILE &  ...  kill -TERM $!; wait $!
"""
import signal

stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # first: the caller may stop us at once
signal.signal(signal.SIGINT, lambda *_: stop.append(1))

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict, deque  # noqa: E402

WINDOW = 5  # samples of ~20 ms


def steal_ticks():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3] != " ":
                fields = line.split()
                out[fields[0][3:]] = int(fields[8])
    return out


def main():
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    start = last = steal_ticks()
    recent = defaultdict(lambda: deque(maxlen=WINDOW))
    worst = defaultdict(int)
    while not stop:
        time.sleep(0.02)
        now = steal_ticks()
        for cpu in now.keys() & last.keys():  # a CPU that went offline or came online meanwhile counts from then on
            recent[cpu].append(now[cpu] - last[cpu])
            worst[cpu] = max(worst[cpu], sum(recent[cpu]))
        last = now
    total = {cpu: (last[cpu] - start[cpu]) * tick_ms for cpu in start.keys() & last.keys()}
    json.dump({"total_ms": total, "worst_100ms_window_ms": {c: worst[c] * tick_ms for c in total}}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
