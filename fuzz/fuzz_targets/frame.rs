//! Camera frames: `vision::decode` on every encoding, then preprocessing of whatever decodes.
//!
//! Input layout: byte 0 picks the encoding, bytes 1..7 give width, height (u16 LE each) and a
//! row step (u16 LE), the rest is the frame's data. Decoding must return a value (image or
//! error) and never panic; a decoded image must preprocess without error to finite values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vision::{DecodeLimits, Encoding, FrameRef, PreprocessConfig, Preprocessor, decode};

fuzz_target!(|input: &[u8]| {
    if input.len() < 7 {
        return;
    }
    let encoding = Encoding::ALL[usize::from(input[0]) % Encoding::ALL.len()];
    let u16_at = |i: usize| u32::from(u16::from_le_bytes([input[i], input[i + 1]]));
    let frame = FrameRef::raw(encoding, u16_at(1), u16_at(3), u16_at(5), &input[7..]);
    let limits = DecodeLimits {
        max_width: 4096,
        max_height: 4096,
        max_decoded_bytes: 32 << 20,
    };
    if let Ok(image) = decode(&frame, &limits) {
        let config = PreprocessConfig {
            width: 16,
            height: 16,
            patch_size: 8,
            ..PreprocessConfig::default()
        };
        let mut pre = Preprocessor::new(config).expect("valid config");
        let mut out = vec![0.0; pre.output_len()];
        pre.process(&image, &mut out)
            .expect("a decoded image preprocesses");
        assert!(out.iter().all(|v| v.is_finite()));
    }
});
