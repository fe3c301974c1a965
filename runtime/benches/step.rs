//! One control step of the edge model over a cache holding 16 / 64 / 128 / 256 frame-steps:
//! incremental (`forward_step` on the bounded cache, per cache dtype) vs full recomputation of
//! the same context (`forward_full`). The cache budget holds exactly N frame-steps, so every
//! measured step evicts one and appends one (steady state).
//!
//! The edge config runs with the yarn-8x RoPE preset (16384-token context) so 256 frame-steps
//! (12,608 tokens) fit. CPU (burn ndarray) by default; `--features cuda` runs on the first GPU.
//! Full recomputation is measured up to 64 frame-steps on CPU (15 s per iteration there on two
//! cores; 256 would need a ~5 GB attention matrix).
//!
//!     cargo bench -p edgevla-runtime --bench step
//!     cargo bench -p edgevla-runtime --bench step --features cuda

// A benchmark binary: a failed setup step should stop it loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use burn::tensor::backend::Backend;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use runtime::bench::{INSTRUCTION, Observations, prefilled_stream};
use runtime::kv::KvDtype;
use runtime::model::{StepInput, Vla, VlaConfig};
use runtime::rope::RopeSpec;

#[cfg(not(feature = "cuda"))]
type B = burn::backend::NdArray<f32>;
#[cfg(not(feature = "cuda"))]
const DEVICE_NAME: &str = "cpu-ndarray";
#[cfg(feature = "cuda")]
type B = burn::backend::Cuda<f32, i32>;
#[cfg(feature = "cuda")]
const DEVICE_NAME: &str = "cuda0";

const FRAMES: [usize; 4] = [16, 64, 128, 256];

fn edge_config() -> VlaConfig {
    let mut c =
        VlaConfig::from_toml(include_str!("../../configs/model/edge.toml")).expect("edge config");
    c.rope = RopeSpec::parse(include_str!("../../configs/rope/yarn-8x.toml"))
        .expect("yarn-8x")
        .config;
    c.validate().expect("edge + yarn-8x");
    c
}

fn bench_steps(criterion: &mut Criterion) {
    let device = burn::tensor::Device::<B>::default();
    let c = edge_config();
    B::seed(&device, 0);
    let model: Vla<B> = c.init(&device);
    let obs = Observations::new(&c, 300);

    let mut group = criterion.benchmark_group(format!("step/{DEVICE_NAME}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(c.tokens_per_step() as u64));
    for frames in FRAMES {
        for dtype in KvDtype::ALL {
            let mut stream =
                prefilled_stream(&model, dtype, frames, &device).expect("prefilled stream");
            let mut i = frames;
            group.bench_function(
                BenchmarkId::new(format!("incremental-{dtype}"), frames),
                |b| {
                    b.iter(|| {
                        i += 1;
                        black_box(
                            model
                                .forward_step(&obs.step(i), &mut stream)
                                .expect("step")
                                .action,
                        )
                    })
                },
            );
        }
        if cfg!(feature = "cuda") || frames <= 64 {
            let steps: Vec<StepInput<'_>> = (0..=frames).map(|i| obs.step(i)).collect();
            group.bench_function(BenchmarkId::new("full-recompute", frames), |b| {
                b.iter(|| {
                    black_box(
                        model
                            .forward_full(INSTRUCTION, &steps, &device)
                            .expect("full")
                            .action,
                    )
                })
            });
        }
    }
    group.finish();
}

/// Encode + decode throughput of one cache row block per format (values/second).
fn bench_codecs(criterion: &mut Criterion) {
    let values: Vec<f32> = (0..49 * 64)
        .map(|i| ((i % 97) as f32 - 48.0) / 10.0)
        .collect();
    let mut group = criterion.benchmark_group("kv-codec");
    group.throughput(Throughput::Elements(values.len() as u64));
    for dtype in KvDtype::ALL {
        group.bench_function(BenchmarkId::new("round-trip", dtype.name()), |b| {
            b.iter(|| {
                black_box(runtime::kv::round_trip(dtype, black_box(&values)).expect("round trip"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_steps, bench_codecs);
criterion_main!(benches);
