//! decode + resize + patchify for one 640x480 JPEG and for a 3-camera step, against a simple
//! baseline built from `image`'s own pieces (`load_from_memory`, `crop_imm`, `imageops::resize`
//! with the `Triangle` filter, then a plain normalize/patchify loop). Part timings (decode only,
//! resize + normalize + patchify only) show where the time goes.
//!
//! Frames: `../shared/data/g1_pick_bottle/cam_high/{000000,000050,000100}.jpg`; when `../shared`
//! is absent, synthetic 640x480 JPEGs (quality 90) instead. Run single-core with
//! `tools/vision_bench.sh` (which pins the process to one CPU and times OpenCV on the same
//! frames in the same run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image::ImageEncoder;
use vision::{
    DecodeLimits, Decoder, Encoding, FrameRef, Image, PreprocessConfig, Preprocessor,
    VisionPipeline,
};

const DEVICE: &str = "cpu-1core";

fn frames() -> Vec<Vec<u8>> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/g1_pick_bottle/cam_high");
    if dir.exists() {
        return [0, 50, 100]
            .iter()
            .map(|i| std::fs::read(dir.join(format!("{i:06}.jpg"))).unwrap())
            .collect();
    }
    eprintln!("{} not found: benchmarking synthetic JPEGs", dir.display());
    (0..3u32)
        .map(|seed| {
            let mut s = u64::from(seed) + 1;
            let px: Vec<u8> = (0..640 * 480)
                .flat_map(|i: u32| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let (x, y) = (i % 640, i / 640);
                    let n = (s >> 60) as u8;
                    [
                        (x / 3) as u8 + n,
                        (y / 2) as u8 + n,
                        ((x + y) / 5) as u8 + n,
                    ]
                })
                .collect();
            let mut buf = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
                .write_image(&px, 640, 480, image::ExtendedColorType::Rgb8)
                .unwrap();
            buf
        })
        .collect()
}

/// Normalize + patchify an already resized RGB8 image (the baseline's last stage).
fn normalize_patchify(rgb: &[u8], cfg: &PreprocessConfig) -> Vec<f32> {
    let (w, p) = (cfg.width as usize, cfg.patch_size as usize);
    let mut out = vec![0.0f32; cfg.n_patches() * cfg.patch_dim()];
    for y in 0..cfg.height as usize {
        for x in 0..w {
            for c in 0..3 {
                let v = f32::from(rgb[(y * w + x) * 3 + c]) / 255.0;
                let patch = (y / p) * (w / p) + x / p;
                out[patch * cfg.patch_dim() + ((y % p) * p + x % p) * 3 + c] =
                    (v - cfg.mean[c]) / cfg.std[c];
            }
        }
    }
    out
}

/// The baseline: everything from `image`.
fn baseline(jpeg: &[u8], cfg: &PreprocessConfig) -> Vec<f32> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .unwrap()
        .to_rgb8();
    let (x0, y0, cw, ch) = cfg.crop_box(img.width(), img.height());
    let cropped = image::imageops::crop_imm(&img, x0, y0, cw, ch).to_image();
    let small = image::imageops::resize(
        &cropped,
        cfg.width,
        cfg.height,
        image::imageops::FilterType::Triangle,
    );
    normalize_patchify(small.as_raw(), cfg)
}

fn bench(c: &mut Criterion) {
    let jpegs = frames();
    let cfg = PreprocessConfig::default(); // 64x64, 16x16 patches: [16, 768] per camera
    let one = &jpegs[0];

    // Sanity: ours and the baseline compute nearly the same thing (the same antialiased
    // triangle filter; each rounds to u8 in between, and ours reads just outside the crop box at
    // its edges as PIL does, the baseline crops first).
    let mut ours = VisionPipeline::new(3, &DecodeLimits::default(), &cfg).unwrap();
    ours.process_camera(0, None, &FrameRef::compressed(Encoding::Jpeg, one))
        .unwrap();
    let mine = ours.patches().camera(0).unwrap().to_vec();
    let diffs: Vec<f32> = mine
        .iter()
        .zip(&baseline(one, &cfg))
        .map(|(a, b)| (a - b).abs() * 127.5)
        .collect();
    let worst = diffs.iter().copied().fold(0.0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    eprintln!("|ours - baseline| in 8-bit levels: max {worst:.2}, mean {mean:.3}");
    assert!(mean < 0.5, "the baseline disagrees");

    let mut g = c.benchmark_group(format!("vision/{DEVICE}/jpeg640x480-to-16x768"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("ours", |b| {
        b.iter(|| {
            ours.process_camera(
                0,
                None,
                &FrameRef::compressed(Encoding::Jpeg, black_box(one)),
            )
            .unwrap();
            black_box(ours.patches().data()[0])
        })
    });
    g.bench_function("baseline_image", |b| {
        b.iter(|| black_box(baseline(black_box(one), &cfg)))
    });
    g.finish();

    let mut g = c.benchmark_group(format!("vision/{DEVICE}/step-3cam-jpeg640x480"));
    g.throughput(Throughput::Elements(3));
    g.bench_function("ours", |b| {
        b.iter(|| {
            for (cam, jpeg) in jpegs.iter().enumerate() {
                ours.process_camera(
                    cam,
                    None,
                    &FrameRef::compressed(Encoding::Jpeg, black_box(jpeg)),
                )
                .unwrap();
            }
            black_box(ours.patches().data()[0])
        })
    });
    g.bench_function("baseline_image", |b| {
        b.iter(|| {
            for jpeg in &jpegs {
                black_box(baseline(black_box(jpeg), &cfg));
            }
        })
    });
    g.finish();

    // Parts: decode alone, resize(+normalize+patchify) alone.
    let mut g = c.benchmark_group(format!("vision/{DEVICE}/parts"));
    let mut decoder = Decoder::default();
    let mut img = Image::default();
    g.bench_function("decode_ours_zune_direct", |b| {
        b.iter(|| {
            decoder
                .decode_into(
                    &FrameRef::compressed(Encoding::Jpeg, black_box(one)),
                    &mut img,
                )
                .unwrap()
        })
    });
    g.bench_function("decode_image_load_from_memory", |b| {
        b.iter(|| {
            black_box(
                image::load_from_memory_with_format(black_box(one), image::ImageFormat::Jpeg)
                    .unwrap()
                    .to_rgb8(),
            )
        })
    });
    let mut pre = Preprocessor::new(cfg.clone()).unwrap();
    let mut out = vec![0.0; pre.output_len()];
    g.bench_function("resize_ours_fast_image_resize_lut", |b| {
        b.iter(|| pre.process(black_box(&img), &mut out).unwrap())
    });
    let rgb = image::RgbImage::from_raw(img.width(), img.height(), img.data().to_vec()).unwrap();
    g.bench_function("resize_image_triangle", |b| {
        b.iter(|| {
            let (x0, y0, cw, ch) = cfg.crop_box(rgb.width(), rgb.height());
            let cropped = image::imageops::crop_imm(black_box(&rgb), x0, y0, cw, ch).to_image();
            let small =
                image::imageops::resize(&cropped, 64, 64, image::imageops::FilterType::Triangle);
            black_box(normalize_patchify(small.as_raw(), &cfg))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
