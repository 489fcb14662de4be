//! Annotation templates (minijinja): checked at load, rendered per alert.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};

/// The names an annotation template may use.
pub const TEMPLATE_VARIABLES: [&str; 7] = [
    "rule",       // the rule's name
    "severity",   // critical, high, medium or low
    "subject",    // the subject's labels, e.g. subject.model
    "labels",     // the rule's own labels
    "values",     // the condition's variables, e.g. values.canary_error_rate
    "thresholds", // list of {variable, op, value}
    "condition",  // the condition as written
];

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A typo in a template should show, not render as an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Compiles `source` and checks that it only uses [`TEMPLATE_VARIABLES`].
pub fn check(source: &str) -> Result<(), String> {
    check_with(&environment(), source, &TEMPLATE_VARIABLES)
}

/// Compiles `source` in `env` and checks that it only uses `allowed`
/// top-level names, suggesting the closest for a typo.
pub fn check_with(env: &Environment<'_>, source: &str, allowed: &[&str]) -> Result<(), String> {
    let template = env
        .template_from_str(source)
        .map_err(|e| format!("template does not compile: {e}"))?;
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !allowed.contains(&v.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(name) => Err(format!(
            "template uses unknown variable `{name}`{}; templates may use {}",
            crate::vocabulary::suggest(name, allowed.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default(),
            allowed.join(", ")
        )),
    }
}

/// Renders each annotation with `context`. A template that fails at render
/// time (for example a value that is missing for this subject) yields its
/// source and the error, never a panic or a silent blank.
pub fn render_all(
    annotations: &BTreeMap<String, String>,
    context: &serde_json::Value,
) -> BTreeMap<String, String> {
    let env = environment();
    annotations
        .iter()
        .map(|(key, source)| {
            let text = env
                .render_str(
                    source,
                    minijinja::Value::from(minijinja::value::Serde(context)),
                )
                .unwrap_or_else(|e| format!("{source} [template error: {e}]"));
            (key.clone(), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_see_values_and_subject() {
        let mut a = BTreeMap::new();
        a.insert(
            "summary".to_string(),
            "{{ subject.model }} error rate {{ values.canary_error_rate }}".to_string(),
        );
        let ctx = serde_json::json!({"subject": {"model": "summarizer"}, "values": {"canary_error_rate": 0.07}});
        assert_eq!(
            render_all(&a, &ctx)["summary"],
            "summarizer error rate 0.07"
        );
    }

    #[test]
    fn unknown_names_and_syntax_errors_are_caught_at_load() {
        assert!(check("{{ subject.model }} {{ values.x }}").is_ok());
        let err = check("{{ subjet.model }}").unwrap_err();
        assert!(err.contains("did you mean `subject`"), "{err}");
        assert!(
            check("{{ unclosed ")
                .unwrap_err()
                .contains("does not compile")
        );
    }

    #[test]
    fn render_errors_are_visible() {
        let mut a = BTreeMap::new();
        a.insert("s".to_string(), "{{ values.nope }}".to_string());
        let out = render_all(&a, &serde_json::json!({"values": {}}));
        assert!(out["s"].contains("template error"), "{}", out["s"]);
    }
}
