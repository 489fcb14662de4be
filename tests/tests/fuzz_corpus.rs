//! The fuzz corpus (`tests/fuzz/corpus/decode`) as a regular test: every
//! input decodes or fails cleanly, and decoded events survive a JSON round
//! trip. `cargo fuzz run decode` (from `tests/fuzz`) grows the corpus.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use canaryd_tests::repo;

#[test]
fn every_corpus_input_decodes_or_fails_cleanly() {
    let dir = repo("tests/fuzz/corpus/decode");
    let mut inputs = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        inputs += 1;
        match canaryd_rules::decode(&bytes) {
            Ok(event) => {
                decoded += 1;
                let json = serde_json::to_vec(&event).unwrap();
                assert_eq!(canaryd_rules::decode(&json).unwrap(), event);
            }
            Err(e) => assert!(!e.message.is_empty()),
        }
    }
    assert!(inputs >= 12, "corpus went missing: {inputs} inputs");
    assert!(decoded >= 6, "the valid seeds must decode: {decoded}");
}
