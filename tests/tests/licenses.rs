//! evalexpr must stay at 11.3.1: that version is MIT, 12 and later are AGPL-3.0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use canaryd_tests::repo;

#[test]
fn evalexpr_is_pinned_to_the_mit_release() {
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("evalexpr = \"=11.3.1\""),
        "the workspace must pin evalexpr with `=11.3.1`"
    );
    let lock = std::fs::read_to_string(repo("Cargo.lock")).unwrap();
    let versions: Vec<&str> = lock
        .split("[[package]]")
        .filter(|p| p.contains("name = \"evalexpr\""))
        .filter_map(|p| p.lines().find(|l| l.starts_with("version = ")))
        .collect();
    assert_eq!(versions, vec!["version = \"11.3.1\""]);
}
