#!/usr/bin/env python3
"""A ROS 2 node on rmw_zenoh, as seen on the wire, for edgevla's ROS 2 mode interop test.

Written from rmw_zenoh's docs/design.md (jazzy 0.2.4+), not from edgevla's code:
- data keys `<domain>/<topic without leading '/'>/<pkg>::msg::dds_::<Type>_/<RIHS01 hash>`;
- an attachment on every sample: int64 LE sequence number, int64 LE source timestamp (ns),
  one byte GID length (16), 16 bytes GID;
- CDR payloads with the encapsulation header (serialized here by `rosbags`);
- liveliness tokens under `@ros2_lv/<domain>/...`.

It connects to the Rust peer, lists the graph's liveliness tokens, publishes camera frames and
joint states as a rmw_zenoh node would (plus one sample without an attachment and one with a
wrong type hash, which edgevla must count and drop), waits for one action chunk on the action
topic and prints JSON lines: {"published": ...}, {"tokens": [...]}, {"action": ...}.

Usage: ros2_interop.py --connect tcp/127.0.0.1:PORT [--domain 0]
Needs: pip install eclipse-zenoh rosbags numpy
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import zenoh
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

# REP 2011 type hashes of ROS 2 jazzy (`ros2 topic info -v`; String is design.md's example).
HASH = {
    "sensor_msgs/msg/CompressedImage": "RIHS01_15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a",
    "sensor_msgs/msg/JointState": "RIHS01_a13ee3a330e346c9d87b5aa18d24e11690752bd33a0350f11c5882bc9179260e",
}
ACTION_CHUNK = """builtin_interfaces/Time stamp
uint64 sequence
uint32 horizon
uint32 dims
float32[] values
"""


def dds_name(type_name: str) -> str:
    pkg, _, name = type_name.split("/")
    return f"{pkg}::msg::dds_::{name}_"


def key(domain: int, topic: str, type_name: str, type_hash: str) -> str:
    return f"{domain}/{topic.strip('/')}/{dds_name(type_name)}/{type_hash}"


def attachment(seq: int, gid: bytes) -> bytes:
    return struct.pack("<qqB", seq, time.time_ns(), 16) + gid


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--domain", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()

    ts = get_typestore(Stores.ROS2_HUMBLE)
    ts.register(get_types_from_msg(ACTION_CHUNK, "edgevla_msgs/msg/ActionChunk"))
    T = ts.types["builtin_interfaces/msg/Time"]
    H = ts.types["std_msgs/msg/Header"]
    CI = ts.types["sensor_msgs/msg/CompressedImage"]
    JS = ts.types["sensor_msgs/msg/JointState"]

    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("connect/endpoints", json.dumps([args.connect]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(conf)
    d = args.domain

    actions = []

    def on_action(sample):
        att = sample.attachment
        actions.append((str(sample.key_expr), bytes(sample.payload.to_bytes()),
                        bytes(att.to_bytes()) if att is not None else None))

    sub = session.declare_subscriber(f"{d}/edgevla/action/**", on_action)

    # The graph as `ros2 node list` / `ros2 topic list -v` would read it.
    tokens = []
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        tokens = [str(r.ok.key_expr) for r in session.liveliness().get(f"@ros2_lv/{d}/**") if r.ok]
        if any("/MP/" in t for t in tokens) and any("/MS/" in t for t in tokens):
            break
        time.sleep(0.2)
    print(json.dumps({"tokens": sorted(tokens)}), flush=True)
    print(f"ros2_interop: {len(tokens)} tokens", file=sys.stderr, flush=True)

    gid_cam = bytes(range(16))
    gid_js = bytes(range(16, 32))
    k_cam = key(d, "/cam/front", "sensor_msgs/msg/CompressedImage", HASH["sensor_msgs/msg/CompressedImage"])
    k_js = key(d, "/joint_states", "sensor_msgs/msg/JointState", HASH["sensor_msgs/msg/JointState"])
    pub_cam = session.declare_publisher(k_cam)
    pub_js = session.declare_publisher(k_js)
    time.sleep(0.5)  # let the subscriptions match
    published = []
    for i in range(3):
        stamp = T(sec=100 + i, nanosec=500 * i)
        img = CI(header=H(stamp=stamp, frame_id="front"), format="jpeg",
                 data=np.array([(i * 7 + j) % 256 for j in range(50 + i)], dtype=np.uint8))
        pub_cam.put(bytes(ts.serialize_cdr(img, CI.__msgtype__)), attachment=attachment(i + 1, gid_cam))
        published.append({"topic": "/cam/front", "sec": 100 + i, "nanosec": 500 * i,
                          "frame_id": "front", "format": "jpeg", "data": img.data.tolist()})
        js = JS(header=H(stamp=stamp, frame_id=""), name=["shoulder", "elbow"],
                position=np.array([0.1 * i, -0.2], dtype=np.float64),
                velocity=np.array([0.0, 0.5], dtype=np.float64),
                effort=np.array([], dtype=np.float64))
        pub_js.put(bytes(ts.serialize_cdr(js, JS.__msgtype__)), attachment=attachment(i + 1, gid_js))
        published.append({"topic": "/joint_states", "sec": 100 + i, "nanosec": 500 * i,
                          "name": ["shoulder", "elbow"], "position": [0.1 * i, -0.2],
                          "velocity": [0.0, 0.5], "effort": []})
    # Bad input a ROS graph can produce: a sample without the attachment (zenoh-pico
    # publishers did that) and a camera sample of another type (wrong hash).
    pub_cam.put(bytes(ts.serialize_cdr(img, CI.__msgtype__)))
    wrong = key(d, "/cam/front", "sensor_msgs/msg/CompressedImage", "RIHS01_" + "0" * 64)
    session.put(wrong, bytes(ts.serialize_cdr(img, CI.__msgtype__)), attachment=attachment(9, gid_cam))
    print(json.dumps({"published": published}), flush=True)

    while time.time() < deadline and not actions:
        time.sleep(0.05)
    if not actions:
        print("no action chunk arrived", file=sys.stderr)
        return 1
    k, payload, att = actions[0]
    msg = ts.deserialize_cdr(payload, "edgevla_msgs/msg/ActionChunk")
    seq, stamp_ns, gid_len = struct.unpack("<qqB", att[:17]) if att and len(att) >= 17 else (None, None, None)
    print(json.dumps({"action": {
        "key": k, "sequence": int(msg.sequence), "horizon": int(msg.horizon), "dims": int(msg.dims),
        "values": [float(v) for v in msg.values], "sec": int(msg.stamp.sec),
        "attachment_len": len(att) if att is not None else None, "attachment_seq": seq,
        "attachment_stamp_ns": stamp_ns, "gid_len": gid_len,
    }}), flush=True)
    sub.undeclare()
    session.close()
    return 0


if __name__ == "__main__":
    # zenoh's threads can keep the interpreter alive after an error: leave at once either way.
    try:
        code = main()
    except Exception:  # noqa: BLE001 - report and exit, the Rust test reads stderr
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
