#!/usr/bin/env python3
"""Writes a rosbag2 bag in MCAP storage with `rosbags`' rosbag2 writer (an independent
implementation of the format: `metadata.yaml` + `<bag>.mcap`, topics with a leading slash,
`ros2msg` schemas, CDR payloads), for edgevla's rosbag2 import test.

Prints one JSON object per message written, in write order: `topic`, `type`, `log_time` (ns)
and `fields` (plain values with the ROS 2 field names). The Rust test opens the bag folder with
`transport::recording::open_recording`, decodes every message and compares.

Usage: rosbag2_write.py OUT_DIR   (OUT_DIR must not exist)
Needs: pip install rosbags numpy
"""
import json
import sys

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore


def main() -> int:
    out = sys.argv[1]
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types["builtin_interfaces/msg/Time"]
    H = ts.types["std_msgs/msg/Header"]
    CI = ts.types["sensor_msgs/msg/CompressedImage"]
    JS = ts.types["sensor_msgs/msg/JointState"]
    rng = np.random.default_rng(5)
    written = []
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cams = [w.add_connection(f"/robot/{c}/image/compressed", CI.__msgtype__, typestore=ts)
                for c in ("left", "right")]
        joints = w.add_connection("/robot/joint_states", JS.__msgtype__, typestore=ts)
        for k in range(5):
            t = 1_700_000_000_000_000_000 + k * 100_000_000
            stamp = {"sec": t // 10**9, "nanosec": t % 10**9}
            for c, conn in zip(("left", "right"), cams):
                data = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8)
                msg = CI(header=H(stamp=T(**stamp), frame_id=c), format="jpeg", data=data)
                w.write(conn, t, ts.serialize_cdr(msg, CI.__msgtype__))
                written.append({"topic": conn.topic, "type": CI.__msgtype__, "log_time": t,
                                "fields": {"header": {"stamp": stamp, "frame_id": c},
                                           "format": "jpeg", "data": data.tolist()}})
            pos = rng.normal(size=3)
            msg = JS(header=H(stamp=T(**stamp), frame_id="base"), name=["a", "b", "c"],
                     position=pos, velocity=np.zeros(0), effort=np.zeros(0))
            w.write(joints, t + 1, ts.serialize_cdr(msg, JS.__msgtype__))
            written.append({"topic": joints.topic, "type": JS.__msgtype__, "log_time": t + 1,
                            "fields": {"header": {"stamp": stamp, "frame_id": "base"},
                                       "name": ["a", "b", "c"], "position": pos.tolist(),
                                       "velocity": [], "effort": []}})
    for m in written:
        print(json.dumps(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
