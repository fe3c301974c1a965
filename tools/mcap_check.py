#!/usr/bin/env python3
"""Reads an edgevla-written MCAP with the Python `mcap` + `mcap-ros2-support` packages and
checks every message against the expected values the Rust test wrote as JSON lines
(key, type, log_time, publish_time, fields). Exits 0 only if every message is equal and
none is missing or extra; prints `N messages equal` on success.

Usage: mcap_check.py FILE.mcap EXPECTED.jsonl
Needs: pip install mcap mcap-ros2-support
"""
import json
import math
import sys

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory


def to_plain(v):
    """A decoded ROS message (or field) as plain Python values."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return list(bytes(v))
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    if hasattr(v, "__slots__"):
        return {k: to_plain(getattr(v, k)) for k in v.__slots__}
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def equal(a, b, path="msg"):
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: fields {sorted(a)} != {sorted(b)}"
        for k in a:
            e = equal(a[k], b[k], f"{path}.{k}")
            if e:
                return e
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            e = equal(x, y, f"{path}[{i}]")
            if e:
                return e
        return None
    if isinstance(a, float) or isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            return f"{path}: {a!r} != {b!r}"
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def main() -> int:
    path, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = [json.loads(line) for line in f if line.strip()]
    got = []
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        header = reader.get_header()
        if header.profile != "ros2":
            print(f"profile {header.profile!r} != 'ros2'", file=sys.stderr)
            return 1
        for schema, channel, message, decoded in reader.iter_decoded_messages(log_time_order=False):
            got.append({
                "key": channel.topic,
                "type": schema.name,
                "log_time": message.log_time,
                "publish_time": message.publish_time,
                "fields": to_plain(decoded),
            })
    if len(got) != len(expected):
        print(f"{len(got)} messages read, {len(expected)} expected", file=sys.stderr)
        return 1
    for i, (g, e) in enumerate(zip(got, expected)):
        err = equal(e, g, f"message {i}")
        if err:
            print(err, file=sys.stderr)
            return 1
    print(f"{len(got)} messages equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
