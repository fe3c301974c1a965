#!/usr/bin/env python3
"""Serializes ROS 2 messages to CDR with `rosbags` (an independent ROS 2 serializer) for
edgevla's byte-for-byte encoding tests.

Prints one JSON object per message on stdout: `type`, `fields` (plain values, the names of
the ROS 2 fields) and `cdr_hex` (the full payload, encapsulation header included). The Rust
test builds the same message from `fields`, encodes it with `transport::msg::encode` and
compares the bytes.

Usage: rosbags_cdr.py
Needs: pip install rosbags numpy
"""
import json
import sys

import numpy as np
from rosbags.typesys import Stores, get_typestore


def main() -> int:
    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types["builtin_interfaces/msg/Time"]
    H = ts.types["std_msgs/msg/Header"]
    Q = ts.types["geometry_msgs/msg/Quaternion"]
    V = ts.types["geometry_msgs/msg/Vector3"]
    IMU = ts.types["sensor_msgs/msg/Imu"]
    rng = np.random.default_rng(11)
    out = []
    # Frame ids of several lengths move the padding before the first float64.
    for i, frame in enumerate(["", "imu0", "imu_link_ab", "é"]):
        sec, nanosec = 1403715273 + i, 262142976 + i
        q = rng.standard_normal(4)
        q /= np.linalg.norm(q)
        av, la = rng.standard_normal(3), rng.standard_normal(3) * 9.81
        covs = [rng.standard_normal(9) for _ in range(3)]
        if i % 2 == 0:
            covs[0] = np.array([-1.0] + [0.0] * 8)
        m = IMU(
            header=H(stamp=T(sec=sec, nanosec=nanosec), frame_id=frame),
            orientation=Q(x=q[0], y=q[1], z=q[2], w=q[3]),
            orientation_covariance=covs[0],
            angular_velocity=V(x=av[0], y=av[1], z=av[2]),
            angular_velocity_covariance=covs[1],
            linear_acceleration=V(x=la[0], y=la[1], z=la[2]),
            linear_acceleration_covariance=covs[2],
        )
        fields = {
            "header": {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame},
            "orientation": {"x": q[0], "y": q[1], "z": q[2], "w": q[3]},
            "orientation_covariance": covs[0].tolist(),
            "angular_velocity": {"x": av[0], "y": av[1], "z": av[2]},
            "angular_velocity_covariance": covs[1].tolist(),
            "linear_acceleration": {"x": la[0], "y": la[1], "z": la[2]},
            "linear_acceleration_covariance": covs[2].tolist(),
        }
        cdr = bytes(ts.serialize_cdr(m, IMU.__msgtype__))
        out.append({"type": IMU.__msgtype__, "fields": fields, "cdr_hex": cdr.hex()})
    for o in out:
        print(json.dumps(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
