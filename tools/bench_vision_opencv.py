#!/usr/bin/env python3
"""OpenCV on the same frames and the same job as vision/benches/pipeline.rs, then the table.

Times cv2.imdecode + center crop + cv2.resize (INTER_AREA, OpenCV's antialiased downscale; and
INTER_LINEAR, which samples 2x2 pixels without antialiasing, for reference) + normalize/patchify
in numpy, for one 640x480 JPEG and a 3-camera step, single-threaded (cv2.setNumThreads(1); run
it pinned to one core, as tools/vision_bench.sh does). Then reads criterion's estimates for the
Rust benchmarks of the same run from target/criterion and prints a Markdown table with every
time as a ratio to ours.

usage: bench_vision_opencv.py [--criterion DIR] JPEG JPEG JPEG
"""
import argparse
import json
import os
import statistics
import time

import cv2
import numpy as np

W = H = 64
P = 16
MEAN = np.array([0.5, 0.5, 0.5], np.float32)
STD = np.array([0.5, 0.5, 0.5], np.float32)
SCALE = (1.0 / (255.0 * STD)).astype(np.float32)
BIAS = (-MEAN / STD).astype(np.float32)


def pipeline(buf, interp):
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    side = min(w, h)  # center crop to the square model input
    x0, y0 = (w - side) // 2, (h - side) // 2
    small = cv2.resize(bgr[y0:y0 + side, x0:x0 + side], (W, H), interpolation=interp)
    rgb = small[:, :, ::-1].astype(np.float32) * SCALE + BIAS
    # [H, W, 3] -> [n_patches, P*P*3] in (py, px, c) order
    return rgb.reshape(H // P, P, W // P, P, 3).transpose(0, 2, 1, 3, 4).reshape(-1, P * P * 3)


def timeit(fn, min_time=2.0, rounds=15):
    """Median seconds per call over `rounds` batches, each batch about min_time / rounds."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        fn()
        n += 1
    per_batch = max(1, int(n * (min_time / rounds) / 0.2))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter() - t0) / per_batch)
    return statistics.median(samples)


def criterion_ns(root, group, bench):
    path = os.path.join(root, group, bench, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        est = json.load(f)
    return est["median"]["point_estimate"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--criterion", default="target/criterion")
    ap.add_argument("jpegs", nargs=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    bufs = [np.frombuffer(open(p, "rb").read(), np.uint8) for p in args.jpegs]
    one = bufs[0]
    res = {}
    res["cv_one_area"] = timeit(lambda: pipeline(one, cv2.INTER_AREA))
    res["cv_one_linear"] = timeit(lambda: pipeline(one, cv2.INTER_LINEAR))
    res["cv_decode"] = timeit(lambda: cv2.imdecode(one, cv2.IMREAD_COLOR))
    res["cv_step_area"] = timeit(lambda: [pipeline(b, cv2.INTER_AREA) for b in bufs])
    print(f"opencv {cv2.__version__}, numpy {np.__version__}, threads {cv2.getNumThreads()}")

    g1 = "vision_cpu-1core_jpeg640x480-to-16x768"
    g3 = "vision_cpu-1core_step-3cam-jpeg640x480"
    gp = "vision_cpu-1core_parts"
    rows = []

    def rust(group, bench):
        ns = criterion_ns(args.criterion, group, bench)
        return None if ns is None else ns * 1e-9

    ours1, ours3 = rust(g1, "ours"), rust(g3, "ours")
    table = [
        ("one 640x480 JPEG → [16, 768]", "ours: zune-jpeg into a reused buffer + fast_image_resize + LUT normalize/patchify", ours1, ours1),
        ("", "baseline: image decode + imageops::resize Triangle + loop", rust(g1, "baseline_image"), ours1),
        ("", "OpenCV imdecode + resize INTER_AREA + numpy", res["cv_one_area"], ours1),
        ("", "OpenCV imdecode + resize INTER_LINEAR (no antialias) + numpy", res["cv_one_linear"], ours1),
        ("3-camera step (3 JPEGs)", "ours", ours3, ours3),
        ("", "baseline: image", rust(g3, "baseline_image"), ours3),
        ("", "OpenCV INTER_AREA", res["cv_step_area"], ours3),
        ("decode only", "ours (zune-jpeg into a reused buffer)", rust(gp, "decode_ours_zune_direct"), rust(gp, "decode_ours_zune_direct")),
        ("", "image::load_from_memory + to_rgb8", rust(gp, "decode_image_load_from_memory"), rust(gp, "decode_ours_zune_direct")),
        ("", "OpenCV imdecode", res["cv_decode"], rust(gp, "decode_ours_zune_direct")),
        ("resize+normalize+patchify only", "ours (fast_image_resize + LUT)", rust(gp, "resize_ours_fast_image_resize_lut"), rust(gp, "resize_ours_fast_image_resize_lut")),
        ("", "image crop + resize Triangle + loop", rust(gp, "resize_image_triangle"), rust(gp, "resize_ours_fast_image_resize_lut")),
    ]
    print("| job | implementation | time | ratio to ours |")
    print("|---|---|---|---|")
    for job, name, t, ref in table:
        if t is None or ref is None:
            rows.append(f"| {job} | {name} | (not measured) | |")
            continue
        rows.append(f"| {job} | {name} | {t * 1e3:.3f} ms | {t / ref:.2f}x |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
