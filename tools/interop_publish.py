#!/usr/bin/env python3
"""Publishes ROS 2 messages over zenoh from Python, for edgevla's interop test.

The messages are serialized to CDR by `rosbags` (an independent ROS 2 serializer) and
published by the `eclipse-zenoh` Python package on edgevla keys. After publishing, the script
prints one JSON object per message on stdout (key, type name, field values) so the Rust test
can check that its subscriber decoded every field exactly.

Usage: interop_publish.py --connect tcp/127.0.0.1:PORT [--robot py] [--prefix robot]
Needs: pip install eclipse-zenoh rosbags numpy
"""
import argparse
import json
import sys
import time

import numpy as np
import zenoh
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

ACTION_CHUNK = """builtin_interfaces/Time stamp
uint64 sequence
uint32 horizon
uint32 dims
float32[] values
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--robot", default="py")
    ap.add_argument("--prefix", default="robot")
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()

    ts = get_typestore(Stores.ROS2_HUMBLE)
    ts.register(get_types_from_msg(ACTION_CHUNK, "edgevla_msgs/msg/ActionChunk"))
    T = ts.types["builtin_interfaces/msg/Time"]
    H = ts.types["std_msgs/msg/Header"]
    CI = ts.types["sensor_msgs/msg/CompressedImage"]
    IM = ts.types["sensor_msgs/msg/Image"]
    JS = ts.types["sensor_msgs/msg/JointState"]
    AC = ts.types["edgevla_msgs/msg/ActionChunk"]
    base = f"{args.prefix}/{args.robot}"
    rng = np.random.default_rng(7)

    def header(i, frame):
        return H(stamp=T(sec=100 + i, nanosec=1000 * i + 7), frame_id=frame), {
            "stamp": {"sec": 100 + i, "nanosec": 1000 * i + 7},
            "frame_id": frame,
        }

    out = []  # (key, encoding or None, payload, json)
    for i in range(3):
        h, hj = header(i, f"cam_front_optical_{'é' * i}")
        data = rng.integers(0, 256, size=1000 + 37 * i, dtype=np.uint8)
        m = CI(header=h, format="jpeg" if i % 2 == 0 else "png", data=data)
        out.append((f"{base}/cam/front", None, ts.serialize_cdr(m, CI.__msgtype__),
                    {"type": CI.__msgtype__, "header": hj, "format": m.format,
                     "data": data.tolist()}))
    for i in range(2):
        h, hj = header(10 + i, "wrist")
        height, width, step = 3 + i, 5, 5 * 3 + 1  # padded rows
        data = rng.integers(0, 256, size=step * height, dtype=np.uint8)
        m = IM(header=h, height=height, width=width, encoding="rgb8", is_bigendian=0,
               step=step, data=data)
        out.append((f"{base}/cam/wrist", "application/cdr;sensor_msgs/msg/Image",
                    ts.serialize_cdr(m, IM.__msgtype__),
                    {"type": IM.__msgtype__, "header": hj, "height": height, "width": width,
                     "encoding": "rgb8", "is_bigendian": 0, "step": step,
                     "data": data.tolist()}))
    for i in range(4):
        h, hj = header(20 + i, "base_link")
        names = [f"joint_{k}" for k in range(i + 1)]
        pos = rng.standard_normal(len(names))
        vel = rng.standard_normal(len(names)) if i % 2 else np.array([], dtype=np.float64)
        eff = rng.standard_normal(len(names)) if i >= 2 else np.array([], dtype=np.float64)
        m = JS(header=h, name=names, position=pos, velocity=vel, effort=eff)
        out.append((f"{base}/joints", None, ts.serialize_cdr(m, JS.__msgtype__),
                    {"type": JS.__msgtype__, "header": hj, "name": names,
                     "position": pos.tolist(), "velocity": vel.tolist(),
                     "effort": eff.tolist()}))
    for i in range(2):
        horizon, dims = 4 + i, 3
        values = (rng.integers(-64, 64, size=horizon * dims) / 8.0).astype(np.float32)
        m = AC(stamp=T(sec=30 + i, nanosec=5), sequence=2**40 + i, horizon=horizon, dims=dims,
               values=values)
        out.append((f"{base}/action", None, ts.serialize_cdr(m, AC.__msgtype__),
                    {"type": AC.__msgtype__, "stamp": {"sec": 30 + i, "nanosec": 5},
                     "sequence": 2**40 + i, "horizon": horizon, "dims": dims,
                     "values": [float(v) for v in values]}))

    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("listen/endpoints", '["tcp/127.0.0.1:0"]')
    conf.insert_json5("connect/endpoints", json.dumps([args.connect]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(conf)
    pubs = {}
    for key, enc, _, _ in out:
        if (key, enc) not in pubs:
            kw = {"encoding": zenoh.Encoding(enc)} if enc else {}
            pubs[(key, enc)] = session.declare_publisher(key, **kw)
    deadline = time.monotonic() + args.timeout
    while not all(p.matching_status.matching for p in pubs.values()):
        if time.monotonic() > deadline:
            print("no matching subscriber", file=sys.stderr)
            return 1
        time.sleep(0.01)
    for key, enc, payload, _ in out:
        pubs[(key, enc)].put(bytes(payload))
        time.sleep(0.005)
    time.sleep(0.2)
    for key, _, _, j in out:
        print(json.dumps({"key": key, **j}))
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
