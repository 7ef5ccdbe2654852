#!/usr/bin/env python3
"""Validates snapshot documents against proto/snapshot.schema.json.

Usage: check_snapshot_schema.py SCHEMA FILE...   (exit 1 on the first invalid file)
"""
import json
import sys

import jsonschema


def main() -> int:
    schema = json.load(open(sys.argv[1]))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sys.argv[2:]:
        errors = sorted(validator.iter_errors(json.load(open(path))), key=lambda e: list(e.path))
        for error in errors:
            print(f"{path}: {'/'.join(map(str, error.path)) or '(top)'}: {error.message}")
        if errors:
            return 1
        print(f"{path}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
