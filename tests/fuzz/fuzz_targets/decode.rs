//! Fuzz the event decoder: any bytes in, an event or a classified error out,
//! never a panic; a decoded event survives a round trip through JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = canaryd_rules::decode(data) {
        let json = serde_json::to_vec(&event).expect("events serialise");
        let again = canaryd_rules::decode(&json).expect("a serialised event decodes");
        assert_eq!(event, again);
    }
});
