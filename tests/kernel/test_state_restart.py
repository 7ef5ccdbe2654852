#!/usr/bin/env python3
"""kleakd's state across restarts (issue 18), on the real kernel, without
systemd: this script plays systemd's part of the protocol kleakd speaks to
it. It owns a NOTIFY_SOCKET (sd_notify datagrams: READY=1, FDSTORE=1 with
FDNAME=kleakd-state and the memfd, FDSTOREREMOVE=1), keeps the stored fd,
and hands it to the next kleakd as systemd would (fd 3, LISTEN_FDS=1,
LISTEN_FDNAMES, LISTEN_PID). The real unit under real systemd is
tests/systemd's job; this one runs wherever the kernel tests run, beside
another kleakd (private socket, snapshot directory and notify socket).

Checks:
  1. a clean stop (SIGTERM) stores an image, and the BPF links and maps stay
     in the store (the programs stay attached; one socket, FDNAME=kleakd-bpf,
     holds them all in one queued message); the next kleakd restores the
     image and adopts the programs (the same link ids, no new link, gap 0):
     64 pipes held across the restart are still outstanding at
     alloc_pipe_info, and closing them frees them there (outstanding down by
     the pipes, unmatched frees not up by them); 64 pipes closed while no
     kleakd ran are freed, 64 made then are outstanding; the first kleakd
     handed its ring tail over and the second reports how long the rings
     went unread (state.unread_ns, tail_bytes);
  1b. a "systemctl stop" (the store closes its fds): no link is left;
  2. SIGKILL after checkpoints (every 1 s): the next kleakd restores the
     checkpoint and reports the gap (stats state.gap.ns > 0), the pipes held
     since before it still outstanding;
  3. an image of another format version is refused with a log line and the
     daemon starts fresh (nothing restored, tracing);
  4. without NOTIFY_SOCKET nothing is stored (state.stored false);
  5. a kleakd of another configuration (ring size) replaces the stored
     programs: attached anew, the old links gone.

usage: test_state_restart.py KLEAKD KLEAKCTL       (as root; exit 0 = pass)
"""
import array
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

KLEAKD, KLEAKCTL = sys.argv[1], sys.argv[2]
failures = 0


def check(ok, what):
    global failures
    print(("PASS: " if ok else "FAIL: ") + what, flush=True)
    if not ok:
        failures += 1


class FakeSystemd:
    """The notify socket and the fd store of one service."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.path = path
        self.stored = {}  # FDNAME -> [fd]: systemd keeps every fd, several per name
        self.lock = threading.Lock()
        self.ready = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        fd_size = array.array("i").itemsize
        while True:
            msg, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * fd_size))
            fds = []
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", data[: len(data) - len(data) % fd_size]))
            fields = dict(l.split("=", 1) for l in msg.decode().splitlines() if "=" in l)
            with self.lock:
                name = fields.get("FDNAME", "stored")
                if fields.get("FDSTOREREMOVE") == "1" and name in self.stored:
                    for fd in self.stored.pop(name):
                        os.close(fd)
                if fields.get("FDSTORE") == "1" and fds:
                    self.stored.setdefault(name, []).append(fds.pop(0))
                for fd in fds:
                    os.close(fd)
            if fields.get("READY") == "1":
                self.ready.set()

    def take(self, name="kleakd-state"):
        with self.lock:
            fds = self.stored.pop(name, [])
        for fd in fds[:-1]:
            os.close(fd)
        return fds[-1] if fds else None

    def handoff(self):
        """Copies of every stored fd, as (name, fd), for the next process:
        systemd keeps its own until the service stops."""
        with self.lock:
            return [(name, os.dup(fd)) for name, fds in sorted(self.stored.items()) for fd in fds]

    def bpf_set(self, field="link_id"):
        """The identity and the names queued in the stored kleakd-bpf socket
        with each fd's `field` from its fdinfo (link_id: None for a map),
        peeked as kleakd does (the message stays for the next one); the
        peeked copies are closed."""
        with self.lock:
            held = self.stored.get("kleakd-bpf", [])
            if not held:
                return None, []
            sock = socket.socket(fileno=os.dup(held[-1]))
        try:
            fd_size = array.array("i").itemsize
            msg, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(253 * fd_size), socket.MSG_PEEK | socket.MSG_DONTWAIT)
        finally:
            sock.close()
        fds = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % fd_size]))
        lines = msg.decode().split("\n")
        named = [(name, fdinfo_field(os.getpid(), fd, field)) for name, fd in zip(lines[1:], fds)]
        for fd in fds:
            os.close(fd)
        return lines[0], named

    def link_ids(self):
        """The BPF link ids in the stored set."""
        return sorted(i for name, i in self.bpf_set()[1] if name.startswith("kleakd-bpf-link-"))

    def ring_sizes(self):
        """The sizes of the stored rings, by CPU."""
        return [n for name, n in self.bpf_set("max_entries")[1] if name.startswith("kleakd-bpf-ring-")]

    def map_count(self):
        return sum(1 for name, _ in self.bpf_set()[1] if name.startswith("kleakd-bpf-map-"))

    def stop_service(self):
        """systemctl stop: the store is emptied and its fds closed."""
        with self.lock:
            stored, self.stored = self.stored, {}
        for fds in stored.values():
            for fd in fds:
                os.close(fd)


def fdinfo_field(pid, fd, field):
    with open("/proc/%d/fdinfo/%d" % (pid, fd)) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def process_link_ids(pid):
    """The BPF link ids a process holds."""
    ids = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "anon_inode:bpf_link":
                ids.append(fdinfo_field(pid, int(fd), "link_id"))
        except OSError:
            pass
    return sorted(ids)


def process_ring_sizes(pid):
    """The sizes of the BPF ring buffers a process holds (mapped or not)."""
    sizes = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "anon_inode:bpf-map" and \
                    fdinfo_field(pid, int(fd), "map_type") == 27:  # BPF_MAP_TYPE_RINGBUF
                sizes.append(fdinfo_field(pid, int(fd), "max_entries"))
        except OSError:
            pass
    return sorted(sizes)


def restart_ring_bytes(buffer_size, cpus):
    """app/tracing_session.h: 4 x buffer_size, at most 256 MiB for all CPUs, a power of two."""
    want = min(4 * buffer_size, max(buffer_size, (256 << 20) // cpus))
    size = buffer_size
    while size * 2 <= want:
        size *= 2
    return size


def link_exists(link_id):
    return subprocess.run(["bpftool", "link", "show", "id", str(link_id)], capture_output=True).returncode == 0


class Kleakd:
    def __init__(self, workdir, notify=None, stored_fd=None, checkpoint="60s", stored=None, buffer_size="8M"):
        self.sock = os.path.join(workdir, "kleakd.sock")
        config = os.path.join(workdir, "kleakd.conf")
        with open(config, "w") as f:
            json.dump({"socket": {"path": self.sock, "group": "root"},
                       "snapshots": {"directory": os.path.join(workdir, "snapshots"),
                                     "checkpoint_interval": checkpoint},
                       "tracing": {"buffer_size": buffer_size}}, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
        if notify:
            env["NOTIFY_SOCKET"] = notify
        argv = [KLEAKD, "serve", "--config", config]
        pass_fds, preexec = (), None
        stored = list(stored or [])
        if stored_fd is not None:
            stored.append(("kleakd-state", stored_fd))
        if stored:
            # As systemd passes fds: from 3 on, named, for this pid only (a
            # wrapper sets LISTEN_PID to its own pid, then execs kleakd).
            env.update(LISTEN_FDS=str(len(stored)), LISTEN_FDNAMES=":".join(name for name, _ in stored))
            argv = [sys.executable, "-c",
                    "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])"] + argv
            # Moved above the highest target first, so no dup2 overwrites a source.
            top = 1000
            def preexec():
                for i, (_, fd) in enumerate(stored):
                    os.dup2(fd, top + i)
                for i in range(len(stored)):
                    os.dup2(top + i, 3 + i)
                    os.close(top + i)
            pass_fds = tuple(range(3, 3 + len(stored)))
        self.log_path = os.path.join(workdir, "kleakd-%d.log" % time.monotonic_ns())
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(argv, env=env, stderr=self.log, stdout=subprocess.DEVNULL, pass_fds=pass_fds,
                                     preexec_fn=preexec)
        for _, fd in stored:
            os.close(fd)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, needle, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in self.text():
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if needle in self.text():
            return True
        print("    kleakd's log (exit %s):\n" % self.proc.poll() + "".join("    " + l for l in self.text().splitlines(True)[-15:]))
        return False

    def ctl(self, *args):
        out = subprocess.run([KLEAKCTL, "--socket", self.sock, "--json", *args],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError("kleakctl %s: %s" % (args, out.stderr))
        return json.loads(out.stdout)

    def restored(self, kind, name):
        """Started with a stored image of `kind`, said so, and still knows
        the held pipes; returns how many are outstanding at their site."""
        check(self.wait_log("queries on"), "%s started with the stored fd" % name)
        check("state restored from the %s image" % kind in self.text(),
              "%s logged: " % name + next((l for l in self.text().splitlines() if "state " in l), "(nothing)"))
        held = self.pipes_outstanding()
        check(held >= 64, "%s: %d outstanding at alloc_pipe_info (>= 64: the held pipes)" % (name, held))
        return held

    def unmatched_at(self, function):
        doc = self.ctl("report")
        return sum(u["count"] for u in doc["unmatched_frees"] if u.get("function") == function)

    def pipes_outstanding(self):
        doc = self.ctl("leaks", "--top", "100000")
        return sum(s.get("outstanding", 0) for s in doc["sites"] if s.get("function") == "alloc_pipe_info")

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def hold_pipes(n=64):
    return [os.pipe() for _ in range(n)]


def close_pipes(pipes):
    for r, w in pipes:
        os.close(r)
        os.close(w)


def wait_until(fn, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if fn():
                return True
        except RuntimeError:
            pass
        time.sleep(0.25)
    return False


def main():
    if os.geteuid() != 0:
        print("FAIL: needs root (BPF)")
        return 1
    with tempfile.TemporaryDirectory(prefix="kleakd-state-") as work:
        systemd = FakeSystemd(os.path.join(work, "notify"))

        # --- 1: a clean stop and a restart ---------------------------------------
        first = Kleakd(work, notify=systemd.path)
        check(first.wait_log("queries on") and systemd.ready.wait(20), "kleakd 1 started (READY=1 received)")
        links = systemd.link_ids()
        identity, _ = systemd.bpf_set()
        check(len(links) >= 6 and systemd.map_count() >= 10 and identity.startswith("abi "),
              "kleakd 1 stored its links (ids %s), its maps (%d) and their identity (%s) in one socket"
              % (links, systemd.map_count(), identity))
        pipes = hold_pipes()
        closed_in_gap = hold_pipes()
        check(wait_until(lambda: first.pipes_outstanding() >= 128), "kleakd 1 sees the 128 held pipes")
        check(first.stop() == 0, "kleakd 1 stopped cleanly on SIGTERM")
        check("state stored with systemd" in first.text(), "kleakd 1 logged that it stored its state")
        check(all(link_exists(i) for i in links), "the programs stay attached while no kleakd runs (links %s)" % links)
        # While no kleakd runs: 64 pipes freed, 64 made.
        close_pipes(closed_in_gap)
        made_in_gap = hold_pipes()
        # The restart's rings (TracingSession::make_room_for_restart()): what
        # the programs write while no kleakd runs goes into rings bigger than
        # the configured ones, stored in their place.
        stop_rings = systemd.ring_sizes()
        big = restart_ring_bytes(8 << 20, len(stop_rings) or 1)
        check(stop_rings and all(n == big for n in stop_rings),
              "kleakd 1 stored %d-byte rings for the restart (%s), the programs write into them"
              % (big, stop_rings))
        image = systemd.take()
        check(image is not None, "FDSTORE=1 with FDNAME=kleakd-state handed over a memfd")
        if image is None:
            return 1
        image_bytes = os.pread(image, 1 << 30, 0)
        check(image_bytes[:8] == b"KLEAKST\0", "the memfd holds a state image (%d bytes)" % len(image_bytes))

        second = Kleakd(work, notify=systemd.path, stored_fd=image, stored=systemd.handoff())
        held = second.restored("clean stop", "kleakd 2 (after the restart)")
        state = second.ctl("stats")["state"]
        check(state["restored_from"] == "clean stop" and state["gap"] is not None and state["gap"]["ns"] == 0,
              "stats state: restored_from %r, gap %s ns (0: the programs ran all along)"
              % (state["restored_from"], state["gap"] and state["gap"]["ns"]))
        check(state["programs"] == "adopted" and state["programs_kept"] is True,
              "stats state: programs %r, programs_kept %r" % (state["programs"], state["programs_kept"]))
        check("kept the" in second.text() and "nothing was detached" in second.text(), "kleakd 2 logged the adoption")
        # The rings were read right through (kernel/ring_tail.h, handed_rings.h):
        # kleakd 1 handed its tail over, kleakd 2 read the rings from its start.
        check("ring tail: " in first.text() and "handed to the next kleakd" in first.text(),
              "kleakd 1 handed its ring tail over: " + next((l for l in first.text().splitlines() if "ring tail" in l), "(nothing)"))
        check(isinstance(state.get("unread_ns"), int) and "tail_bytes" in state and "went unread" in second.text(),
              "stats state: unread_ns %r, tail_bytes %r" % (state.get("unread_ns"), state.get("tail_bytes")))
        check(process_link_ids(second.proc.pid) == links and systemd.link_ids() == links,
              "kleakd 2 holds the same links (%s), no new one (%s)" % (links, process_link_ids(second.proc.pid)))
        # Back to the configured size once read (every second), the big ones
        # let go and the set stored again (every 5 s) names the new ones.
        eight = [8 << 20] * len(stop_rings)
        check(wait_until(lambda: second.ctl("stats")["rings"]["bytes_per_cpu"] == eight
                         and process_ring_sizes(second.proc.pid) == eight and systemd.ring_sizes() == eight, 15),
              "kleakd 2 put the rings back to 8M: stats %s, held %s, stored %s"
              % (second.ctl("stats")["rings"]["bytes_per_cpu"], process_ring_sizes(second.proc.pid),
                 systemd.ring_sizes()))
        # A pipe is two allocations at alloc_pipe_info (the pipe_inode_info and
        # its buffer array). 64 held across + 64 made in the gap: 256; the 64
        # closed in the gap are freed, else 384 (other processes' pipes made
        # since kleakd 1 started may add a few).
        check(256 <= held < 256 + 64,
              "outstanding at alloc_pipe_info after the restart: %d (256 = 2 x (held + made in the gap): the 64 "
              "closed in the gap were freed)" % held)
        unmatched_before = second.unmatched_at("free_pipe_info")
        check(unmatched_before < 64, "the gap's frees matched their allocations: %d unmatched at free_pipe_info"
              % unmatched_before)
        close_pipes(pipes)
        close_pipes(made_in_gap)
        check(wait_until(lambda: second.pipes_outstanding() <= held - 224),
              "closing the pipes frees them at their site (outstanding %d -> %d)" % (held, second.pipes_outstanding()))
        unmatched_after = second.unmatched_at("free_pipe_info")
        # Had the restart forgotten them, the pipes' frees would count
        # unmatched at free_pipe_info (2 each); other processes' pipes made
        # before kleakd 2 started and closed since may add a few.
        check(unmatched_after - unmatched_before < 64,
              "no jump in unmatched frees at free_pipe_info from the restart (%d -> %d)"
              % (unmatched_before, unmatched_after))

        # --- 1b: systemctl stop: nothing is left attached ---------------------------
        check(second.stop() == 0, "kleakd 2 stopped cleanly")
        systemd.stop_service()
        check(wait_until(lambda: not any(link_exists(i) for i in links)),
              "after the store closes its fds no link of kleakd's is left (%s)" % links)

        # --- 2: a crash resumes from the checkpoint ---------------------------------
        third = Kleakd(work, notify=systemd.path, checkpoint="1s")
        check(third.wait_log("queries on"), "kleakd 3 started (checkpoints every 1s)")
        pipes = hold_pipes()
        check(wait_until(lambda: third.pipes_outstanding() >= 64), "kleakd 3 sees 64 new held pipes")
        time.sleep(2.5)  # at least one checkpoint after the pipes
        third.stop(signal.SIGKILL)
        links = systemd.link_ids()
        checkpoint = systemd.take()
        check(checkpoint is not None, "a checkpoint was stored before SIGKILL")
        if checkpoint is None:
            return 1
        fourth = Kleakd(work, notify=systemd.path, stored_fd=checkpoint, stored=systemd.handoff())
        fourth.restored("checkpoint", "kleakd 4 (after the crash)")
        state = fourth.ctl("stats")["state"]
        gap = state["gap"]
        check(gap is not None and gap["ns"] > 0 and gap["to_ns"] > gap["from_ns"],
              "the gap since the checkpoint is reported: %s" % gap)
        check(state["programs"] == "adopted" and process_link_ids(fourth.proc.pid) == links,
              "kleakd 4 adopted the crashed one's programs (links %s)" % links)
        close_pipes(pipes)
        check(fourth.stop() == 0, "kleakd 4 stopped cleanly")

        # --- 5: another configuration replaces the stored programs -----------------
        stale = systemd.take()
        sixth = Kleakd(work, notify=systemd.path, stored=systemd.handoff(), buffer_size="4M")
        check(sixth.wait_log("queries on"), "kleakd 6 (4M rings) started with the 8M daemon's programs")
        state = sixth.ctl("stats")["state"]
        # The fake store reads its datagrams on a thread of its own: wait for the new set.
        wait_until(lambda: systemd.link_ids() and not set(systemd.link_ids()) & set(links))
        new_links = systemd.link_ids()
        check(state["programs"] == "replaced" and "do not fit" in sixth.text(),
              "kleakd 6: programs %r (%s)" % (state["programs"],
                                              next((l for l in sixth.text().splitlines() if "do not fit" in l), "")))
        check(wait_until(lambda: not any(link_exists(i) for i in links)) and new_links and
              not set(new_links) & set(links), "the old links are gone (%s), the new ones stored (%s)" % (links, new_links))
        check(sixth.stop() == 0, "kleakd 6 stopped cleanly")
        systemd.stop_service()
        check(wait_until(lambda: not any(link_exists(i) for i in new_links)), "stopped: no link left (%s)" % new_links)

        # --- 3: an image of another format is refused ---------------------------------
        if stale is not None:
            data = bytearray(os.pread(stale, 1 << 30, 0))
            os.close(stale)
            struct.pack_into("<I", data, 8, 999)  # the format version
            bad = os.memfd_create("kleakd-state")
            os.write(bad, bytes(data))
            fifth = Kleakd(work, stored_fd=bad)
            check(fifth.wait_log("queries on"), "kleakd 5 started with an image of format 999")
            line = next((l for l in fifth.text().splitlines() if "stored state refused" in l), "")
            check("state format 999" in line and "tracing starts fresh" in line, "kleakd 5 logged: " + (line or "(nothing)"))
            state = fifth.ctl("stats")["state"]
            check(state["restored_from"] is None and "format 999" in (state["refused"] or ""),
                  "stats state: restored_from %r, refused %r" % (state["restored_from"], state["refused"]))
            # --- 4: without systemd nothing is stored ---
            check(state["stored"] is False, "without NOTIFY_SOCKET: state.stored is false")
            check(fifth.stop() == 0, "kleakd 5 stopped cleanly")
        else:
            check(False, "kleakd 4 stored no image on its clean stop")
    print("%s: %d failure(s)" % ("FAIL" if failures else "PASS", failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
