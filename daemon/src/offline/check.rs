//! `canaryd check`: validate rule files, rule test files and configs.

use std::path::Path;

use canaryd_rules::{LoadOptions, load_rules};

use crate::config::Config;
use crate::offline::ruletest;

/// What kind of file a path holds, judged by its top-level keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// Has `alerts:`.
    Rules,
    /// Has `tests:`.
    RuleTests,
    /// Anything else is read as a daemon config.
    Config,
}

/// Guesses the kind of file from its text. Unparsable text is checked as a
/// rule file, whose loader gives the best syntax errors.
pub fn kind_of(text: &str) -> FileKind {
    let Ok(serde_yaml_ng::Value::Mapping(map)) =
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
    else {
        return FileKind::Rules;
    };
    if map.contains_key("tests") {
        FileKind::RuleTests
    } else if map.contains_key("alerts") || !map.contains_key("rules") {
        FileKind::Rules
    } else {
        FileKind::Config
    }
}

/// Checks one file. Returns a one-line success message, or every error.
pub fn check_file(path: &Path) -> Result<String, Vec<String>> {
    let bytes =
        std::fs::read(path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let kind = std::str::from_utf8(&bytes)
        .map(kind_of)
        .unwrap_or(FileKind::Rules);
    let name = path.display().to_string();
    match kind {
        FileKind::Rules => match load_rules(&name, &bytes, &LoadOptions::default()) {
            Ok(rules) => Ok(format!("{name}: ok, {} rules", rules.len())),
            Err(errors) => Err(errors.iter().map(ToString::to_string).collect()),
        },
        FileKind::RuleTests => match ruletest::load(path) {
            Ok((file, loaded)) => Ok(format!(
                "{name}: ok, {} tests over {} rules",
                file.tests.len(),
                loaded.rules.len()
            )),
            Err(ruletest::TestFileError::Rules(e)) => Err(e.lines()),
            Err(e) => Err(vec![e.to_string()]),
        },
        FileKind::Config => {
            let loaded = Config::read(path)
                .and_then(Config::load)
                .map_err(|e| e.lines())?;
            let problems = loaded.problems();
            if !problems.is_empty() {
                return Err(problems
                    .into_iter()
                    .map(|p| format!("{name}: {p}"))
                    .collect());
            }
            let (rules, config) = (&loaded.rules, &loaded.config);
            Ok(format!(
                "{name}: ok, config with {} rules from {} files",
                rules.len(),
                config.rules.len()
            ))
        }
    }
}
