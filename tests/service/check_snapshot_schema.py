#!/usr/bin/env python3
"""Validates snapshot documents against proto/snapshot.schema.json, and the
rules of their "history" section a JSON schema cannot state (the ones a
restarted kleakd checks before it loads the section): times rise within a
resolution, each site appears once, the section belongs to the document's
boot and kernel and to its verdicts' interval.

Usage: check_snapshot_schema.py SCHEMA FILE...   (exit 1 on the first invalid file)
"""
import json
import sys

import jsonschema


def history_errors(doc):
    history = doc.get("history")
    if history is None:
        return []
    errors = []
    for key in ("boot_id", "kernel_release"):
        if history[key] != doc[key]:
            errors.append(f"history/{key}: {history[key]!r} is not the document's {doc[key]!r}")
    interval = doc.get("verdicts", {}).get("rules", {}).get("interval_ns")
    if interval is not None and history["interval_ns"] != interval:
        errors.append(f"history/interval_ns: {history['interval_ns']} is not verdicts/rules/interval_ns {interval}")
    seen = set()
    for i, site in enumerate(history["sites"]):
        if site["site_address"] in seen:
            errors.append(f"history/sites/{i}/site_address: {site['site_address']} appears twice")
        seen.add(site["site_address"])
        if not any(site["tiers"]):
            errors.append(f"history/sites/{i}/tiers: no points")
        for t, tier in enumerate(site["tiers"]):
            for k in range(1, len(tier)):
                if tier[k][0] <= tier[k - 1][0]:
                    errors.append(f"history/sites/{i}/tiers/{t}/{k}: t_ms {tier[k][0]} is not after {tier[k - 1][0]}")
    return errors


def main() -> int:
    schema = json.load(open(sys.argv[1]))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sys.argv[2:]:
        doc = json.load(open(path))
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for error in errors:
            print(f"{path}: {'/'.join(map(str, error.path)) or '(top)'}: {error.message}")
        if errors:
            return 1
        semantic = history_errors(doc)
        for error in semantic:
            print(f"{path}: {error}")
        if semantic:
            return 1
        print(f"{path}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
