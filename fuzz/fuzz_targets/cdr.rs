//! ROS 2 CDR messages: byte 0 picks the message kind, the rest is the payload. Decoding returns
//! a message or an error, never panics; a message that decodes encodes again, and that encoding
//! decodes to the same message (the payload as read round-trips). The stamp peek used by the
//! recorder agrees with the full decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::msg::MessageKind;

fuzz_target!(|input: &[u8]| {
    let Some((&pick, payload)) = input.split_first() else {
        return;
    };
    let kind = MessageKind::ALL[usize::from(pick) % MessageKind::ALL.len()];
    let peeked = transport::record::peek_stamp(kind, payload);
    let Ok(message) = kind.decode(payload) else {
        return;
    };
    assert_eq!(message.kind(), kind);
    if let Some(stamp) = message.stamp() {
        assert_eq!(peeked, Some(stamp), "peek_stamp disagrees with the decode");
    }
    let bytes = message.encode().expect("a decoded message encodes");
    let again = kind.decode(&bytes).expect("its encoding decodes");
    // NaN != NaN: compare the encodings, which are bit-exact
    let bytes_again = again.encode().expect("encodes");
    assert_eq!(bytes, bytes_again, "decode ∘ encode is not the identity");
});
