#!/usr/bin/env bash
# One-core benchmark of the vision pipeline: criterion (vision/benches/pipeline.rs) and OpenCV on
# the same G1 frames, in one run, then a table of ratios. Needs `pip install
# opencv-python-headless numpy`. Pins everything to one CPU (default 1; CPU=N to change).
set -euo pipefail
cd "$(dirname "$0")/.."
cpu="${CPU:-1}"
frames=../shared/data/g1_pick_bottle/cam_high
taskset -c "$cpu" cargo bench -p edgevla-vision --bench pipeline -- --noplot "$@"
if [ -d "$frames" ]; then
    taskset -c "$cpu" python3 tools/bench_vision_opencv.py \
        "$frames/000000.jpg" "$frames/000050.jpg" "$frames/000100.jpg"
else
    echo "$frames not found: OpenCV comparison skipped (the Rust bench used synthetic JPEGs)"
fi
