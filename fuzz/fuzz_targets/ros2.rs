//! What an rmw_zenoh peer sends besides the payload: the 33-byte attachment and the key
//! expression naming domain, topic and type. Both parse or fail cleanly, never panic; an
//! attachment that parses encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::ros2::{Attachment, parse_data_key};

fuzz_target!(|input: &[u8]| {
    if let Ok(a) = Attachment::decode(input) {
        assert_eq!(a.encode().as_slice(), input, "attachment round trip");
    }
    if let Ok(key) = std::str::from_utf8(input) {
        let _ = parse_data_key(key);
    }
});
