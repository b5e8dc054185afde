//! Fuzzes the MQTT decoder: arbitrary bytes, decoded frame after frame, must never panic and
//! must always make progress or stop.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut left = buf.len();
    while let Ok(Some(_)) = tern::codec::decode(&mut buf, 64 * 1024) {
        assert!(buf.len() < left, "a decoded frame consumed nothing");
        left = buf.len();
    }
});
