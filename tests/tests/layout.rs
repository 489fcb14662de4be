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
