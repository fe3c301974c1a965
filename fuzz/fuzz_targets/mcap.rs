//! MCAP recordings (`edgevla replay`, `demo --replay`, the importer's output): the recording
//! parser, with its partial-chunk recovery, returns a recording or an error and never panics;
//! every message it returns decodes or fails cleanly as its channel's schema says.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(recording) = transport::recording::parse_recording(input) {
        for m in recording.messages.iter().take(64) {
            if let Some(kind) = m
                .schema_name
                .as_deref()
                .and_then(transport::msg::MessageKind::from_type_name)
            {
                let _ = kind.decode(&m.data);
            }
        }
    }
});
