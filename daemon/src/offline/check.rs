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
                let text = String::from_utf8_lossy(&bytes);
                return Err(problems
                    .into_iter()
                    .map(|p| match line_of(&text, &p) {
                        Some(line) => format!("{name}:{line}: {p}"),
                        None => format!("{name}: {p}"),
                    })
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

/// The line of the key a `rollouts.` problem names (`rollouts.models.m:
/// ...`), found by walking the keys down the file's indentation.
fn line_of(text: &str, problem: &str) -> Option<usize> {
    let path = problem.split([':', ' ']).next()?;
    if !path.starts_with("rollouts.") {
        return None;
    }
    let mut found: Option<(usize, usize)> = None; // (line index, indent)
    for key in path.split('.') {
        let from = found.map_or(0, |(i, _)| i + 1);
        let (i, indent) = text.lines().enumerate().skip(from).find_map(|(i, line)| {
            let rest = line.trim_start();
            let indent = line.len() - rest.len();
            let deeper = found.is_none_or(|(_, parent)| indent > parent);
            (deeper && rest.strip_prefix(key)?.starts_with(':')).then_some((i, indent))
        })?;
        found = Some((i, indent));
    }
    found.map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn a_rollouts_problem_points_at_its_key() {
        let text = "rules: [r.yaml]\nrollouts:\n  default:\n    stages: []\n  models:\n    default:\n      soak: 1h\n    fraud:\n      stages: []\n";
        assert_eq!(
            line_of(text, "rollouts.default: a plan needs at least one stage"),
            Some(3)
        );
        assert_eq!(
            line_of(text, "rollouts.models.fraud: stage 1: ..."),
            Some(8)
        );
        assert_eq!(
            line_of(text, "rollouts.models.default.soak: negative"),
            Some(7)
        );
        assert_eq!(line_of(text, "rollouts.models.other: ..."), None);
        assert_eq!(line_of(text, "routes.auto_rollback: no receiver"), None);
    }
}
