#!/usr/bin/env python3
"""bench/steal_summary.py - one cpu_steal.py result, as compare.sh and scale.sh print it.

Usage: steal_summary.py worst FILE   the most any vCPU was stolen in ~100 ms, in ms
       steal_summary.py line FILE    per CPU: total and worst ~100 ms window
Prints "?" when FILE holds no result (the monitor was stopped before it wrote one).
"""
import json
import sys

what, path = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        steal = json.load(f)
except (OSError, ValueError):
    print("?")
    sys.exit(0)
worst = steal["worst_100ms_window_ms"]
if what == "worst":
    print(f"{max(worst.values(), default=0):.0f}")
else:
    cpus = sorted(steal["total_ms"], key=int)
    print(", ".join(f"CPU {c} {steal['total_ms'][c]:.0f} ms (at most {worst[c]:.0f} in ~100 ms)" for c in cpus))
