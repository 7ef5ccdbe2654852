#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/) from
real inputs: the protocol golden lines, the config fixtures and the shipped
config, and the recorded ring records of tests/fixtures/recording-pipes (plus,
with --recording DIR, a fresh `kleakd record` of this kernel: batches, time
marks, printk and cache records of the current ABI).

Run from anywhere; it replaces the corpus directories it writes. The
committed corpus was made with --recording of a 2 s `kleakd record -b 1M`
on 6.18 (ABI 3: kmalloc, kfree, cache alloc with its cache, cache free,
time marks and a printk line written to /dev/kmsg meanwhile).
  tests/fuzz/make_corpus.py [--recording DIR]
"""
import argparse
import hashlib
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
HEADER = 32  # recording file header (core/recording_format.h)
SIZES = {1: 48, 2: 32, 3: 48, 4: 32, 6: 16, 7: 56}  # record kind -> bytes (bpf/kleak_abi.h)


def write(target, seeds):
    out = CORPUS / target
    # Inputs a fuzzer crashed on (crash-*) stay: they are regression seeds.
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if not old.name.startswith("crash-"):
            old.unlink()
    for seed in seeds:
        # Named by content, as libFuzzer names what it adds.
        (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    print(f"{target}: {len(seeds)} seeds")


def frames(path):
    """The ring records of one per-CPU recording file, in order."""
    data = path.read_bytes()[HEADER:]
    pos, out = 0, []
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + length > len(data):
            break
        out.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out


def kind(record):
    return struct.unpack_from("<H", record, 8)[0] if len(record) >= 16 else 0


def cut_recording(directory, frames_per_cpu):
    """A recording in fuzz_recording's layout: its first frames of each CPU."""
    meta = json.loads((directory / "meta.json").read_text())
    # A few symbols show their shape; all of them (54 here) only make every
    # execution parse more.
    meta["symbols"] = dict(list(meta["symbols"].items())[:4])
    out = bytearray()
    text = json.dumps(meta).encode()
    out += struct.pack("<I", len(text)) + text
    for cpu in range(meta["cpus"]):
        raw = (directory / f"kleak{cpu}").read_bytes()
        body = raw[:HEADER]
        for record in frames(directory / f"kleak{cpu}")[:frames_per_cpu]:
            body += struct.pack("<I", len(record)) + record
        out += struct.pack("<I", len(body)) + body
    return bytes(out)


def protocol_seeds():
    seeds = []
    lines = b""
    for path in sorted((FIXTURES / "proto").glob("*.jsonl")):
        seeds.append(path.read_bytes())
        if path.name.startswith("request_"):
            lines += path.read_bytes()
    seeds.append(lines)  # several requests on one connection
    # The input that needed megabytes of stack, cut to fuzzer size: a value
    # nested past the limit where an error message quotes it.
    seeds.append(b'{"v":1,"id":7,"op":"leaks","args":{"top":' + b"[" * 40 + b"]" * 40 + b"}}\n")
    # A number past a double's range, whose exception escaped the decoder
    # (found by fuzz_protocol; its crashing input is in the corpus too).
    seeds.append(b'{"v":1,"id":8,"op":"leaks","args":{"top":1e999}}\n')
    return seeds


def config_seeds():
    paths = sorted((FIXTURES / "config").glob("*.conf")) + [ROOT / "config" / "kleakd.conf"]
    return [path.read_bytes() for path in paths]


def ring_seeds(recordings):
    """Lone records of every kind seen, and batches as BPF writes them: whole
    records back to back, a time mark last. Two leading bytes: where the
    sample wraps around the ring's end, and over how many CPUs it spreads."""
    seeds = []
    for directory in recordings:
        for cpu_file in sorted(directory.glob("kleak[0-9]*")):
            records = frames(cpu_file)
            by_kind = {}
            for record in records:
                by_kind.setdefault(kind(record), record)
            for wrap, record in enumerate(by_kind.values()):
                seeds.append(bytes([wrap * 8 % 256, 1]) + record)
            # Consecutive records as one sample, as many as fit in a batch.
            batch = b""
            for record in records[:200]:
                if len(batch) + len(record) > 4096 or kind(record) == 5:
                    continue
                batch += record
            seeds.append(bytes([100, 2]) + batch)
    return seeds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recording", type=pathlib.Path, help="a fresh `kleakd record` directory to add")
    args = parser.parse_args()
    recordings = [FIXTURES / "recording-pipes"] + ([args.recording] if args.recording else [])

    write("fuzz_protocol", protocol_seeds())
    write("fuzz_config", config_seeds())
    write("fuzz_recording", [cut_recording(d, n) for d in recordings for n in (8, 64)])
    write("fuzz_ring_records", ring_seeds(recordings))


if __name__ == "__main__":
    main()
