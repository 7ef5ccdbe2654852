#!/usr/bin/env python3
"""bench/loop_stall.py - stop one thread of a process for a while, as a host stops a vCPU.

Usage: loop_stall.py TID MS TIMES GAP_S
Stops thread TID (ptrace PTRACE_SEIZE + PTRACE_INTERRUPT: that thread only,
the others run on) for MS milliseconds, TIMES times, GAP_S seconds apart.
Root, or the same user with ptrace allowed.
"""
import ctypes
import os
import sys
import time

PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH = 0x4206, 0x4207, 17
WALL = 0x40000000

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
tid, ms, times, gap = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(times):
    if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
        sys.exit(f"loop_stall.py: ptrace(SEIZE, {tid}): {os.strerror(ctypes.get_errno())}")
    libc.ptrace(PTRACE_INTERRUPT, tid, None, None)
    os.waitpid(tid, WALL)
    time.sleep(ms / 1000)
    libc.ptrace(PTRACE_DETACH, tid, None, None)
    time.sleep(gap)
