//! The crates' module graphs have no cycles: every module can be read, and
//! changed, knowing only the modules below it.

use canaryd_tests::modgraph::ModGraph;

#[test]
fn no_crate_has_a_module_import_cycle() {
    let mut found = Vec::new();
    for krate in ["rules", "connectors", "daemon", "tests"] {
        let src = canaryd_tests::repo(krate).join("src");
        let graph = ModGraph::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert!(
            graph.edges.len() > 3,
            "{krate}: only {} modules read from {}",
            graph.edges.len(),
            src.display()
        );
        for cycle in graph.cycles() {
            found.push(format!("{krate}: {}", cycle.join(" <-> ")));
        }
    }
    assert!(
        found.is_empty(),
        "module import cycles:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_pure_core_cannot_read_the_clock() {
    // chrono's `clock` feature is what gives `Utc::now()`; the rules crate
    // takes time as an argument, so it must not be able to read it.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "canaryd-rules",
            "-e",
            "features,normal",
            "-i",
            "chrono",
            "--prefix",
            "none",
        ])
        .current_dir(canaryd_tests::root())
        .output()
        .unwrap_or_else(|e| panic!("cargo tree: {e}"));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("chrono feature \"std\""), "{tree}");
    assert!(!tree.contains("chrono feature \"clock\""), "{tree}");
}
