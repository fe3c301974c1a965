#!/usr/bin/env python3
"""Reads a rosbag2 bag folder with `rosbags`' rosbag2 reader (an independent implementation of
the format: it parses `metadata.yaml`, checks the storage plugin, version and serialization
format, and reads the MCAP file through its own MCAP parser), for edgevla's ROS 2-mode
recording test.

Prints one JSON line describing the bag (`message_count`, `duration_ns`, `start_ns` and per
topic `name`, `type`, `type_description_hash`, `message_count`, all from metadata.yaml), then
one JSON object per message in the reader's order: `topic`, `type`, `log_time` (ns), `raw`
(the CDR bytes, hex) and `fields` (the message deserialized with rosbags' jazzy typestore, as
plain values with the ROS 2 field names; a type outside that store is registered from the
`ros2msg` schema the bag carries).

Usage: rosbag2_read.py BAG_DIR
Needs: pip install rosbags numpy
"""
import dataclasses
import json
import sys

from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore


def plain(v):
    """A deserialized ROS message (or field) as plain Python values."""
    if dataclasses.is_dataclass(v):
        return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)
                if f.name != "__msgtype__"}
    if isinstance(v, (bytes, bytearray, memoryview)):
        return list(bytes(v))
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def main() -> int:
    ts = get_typestore(Stores.ROS2_JAZZY)
    with Reader(sys.argv[1]) as reader:
        for c in reader.connections:
            # types outside the jazzy store (edgevla_msgs/msg/ActionChunk) from the bag's schema
            if c.msgtype not in ts.fielddefs and c.msgdef.data:
                ts.register(get_types_from_msg(c.msgdef.data, c.msgtype))
        print(json.dumps({
            "message_count": reader.message_count,
            "duration_ns": reader.duration,
            "start_ns": reader.start_time,
            "topics": [{"name": c.topic, "type": c.msgtype, "type_description_hash": c.digest,
                        "message_count": c.msgcount} for c in reader.connections],
        }))
        for conn, t, raw in reader.messages():
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            print(json.dumps({"topic": conn.topic, "type": conn.msgtype, "log_time": t,
                              "raw": bytes(raw).hex(), "fields": plain(msg)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
