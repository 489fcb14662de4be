//! Conditions: evalexpr expressions compiled once at load time, checked
//! against the vocabulary, then evaluated per subject.

use evalexpr::{Context, EvalexprResult, Node, Operator, Value};

use crate::vocabulary::{BASELINE, Vocabulary};

/// A compiled, type-checked condition.
#[derive(Clone, Debug)]
pub struct Condition {
    /// The expression as written in the rule file.
    source: String,
    /// The operator tree, with integer literals turned into floats so that
    /// `canary_request_rate == 0` compares numbers, not types.
    tree: Node,
    /// Identifiers as written, in order of first use.
    idents: Vec<String>,
    /// The variable each identifier reads; `baseline` resolved to a stable metric.
    vars: Vec<String>,
    /// The rule's `baseline:` field, which the compilation depended on.
    explicit_baseline: Option<String>,
}

/// Why a condition was rejected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConditionError {
    /// evalexpr could not parse it.
    #[error("condition does not parse: {0}")]
    Syntax(String),
    /// It assigns or chains statements.
    #[error("condition must be a pure expression; it may not assign ({0})")]
    Assignment(String),
    /// It names a variable the engine does not know.
    #[error("unknown variable `{name}`{}", .suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownVariable {
        /// The identifier as written.
        name: String,
        /// The closest known variable, if any.
        suggestion: Option<String>,
    },
    /// `baseline` cannot be resolved.
    #[error("{0}")]
    Baseline(String),
    /// It holds a string that is not a verdict.
    #[error(
        "unknown string {0:?}: the only strings a condition may hold are the judge's verdicts \"pass\", \"high\" and \"low\""
    )]
    Text(String),
    /// It does not evaluate to true or false.
    #[error("condition must evaluate to true or false, but {0}")]
    NotBoolean(String),
}

impl Condition {
    /// Compiles `source`. `explicit_baseline` is the rule's `baseline:` field.
    pub fn compile(
        source: &str,
        vocabulary: &Vocabulary,
        explicit_baseline: Option<&str>,
    ) -> Result<Condition, ConditionError> {
        let mut tree = evalexpr::build_operator_tree(source)
            .map_err(|e| ConditionError::Syntax(e.to_string()))?;
        reject_assignments(&tree)?;
        floats_only(&mut tree);
        verdicts_as_numbers(&mut tree)?;

        let mut idents: Vec<String> = Vec::new();
        for ident in tree.iter_read_variable_identifiers() {
            if !idents.iter().any(|i| i == ident) {
                idents.push(ident.to_string());
            }
        }
        for ident in &idents {
            if ident != BASELINE && vocabulary.kind(ident).is_none() {
                return Err(ConditionError::UnknownVariable {
                    name: ident.clone(),
                    suggestion: vocabulary.suggest(ident).map(str::to_string),
                });
            }
        }
        let uses_baseline = idents.iter().any(|i| i == BASELINE);
        let baseline = match (uses_baseline, explicit_baseline) {
            (false, None) => None,
            (false, Some(b)) => {
                return Err(ConditionError::Baseline(format!(
                    "`baseline: {b}` is set but the condition does not use `baseline`"
                )));
            }
            (true, Some(b)) => match vocabulary.kind(b) {
                Some(_) => Some(b.to_string()),
                None => {
                    return Err(ConditionError::UnknownVariable {
                        name: b.to_string(),
                        suggestion: vocabulary.suggest(b).map(str::to_string),
                    });
                }
            },
            (true, None) => Some(implied_baseline(&idents, vocabulary)?),
        };
        let vars = idents
            .iter()
            .map(|i| match (&baseline, i.as_str()) {
                (Some(b), BASELINE) => b.clone(),
                _ => i.clone(),
            })
            .collect();
        let condition = Condition {
            source: source.to_string(),
            tree,
            idents,
            vars,
            explicit_baseline: explicit_baseline.map(str::to_string),
        };
        condition.type_check()?;
        Ok(condition)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether compiling `source` with `explicit_baseline` would give this
    /// condition (against the same vocabulary), so it can be reused.
    pub fn compiled_from(&self, source: &str, explicit_baseline: Option<&str>) -> bool {
        self.source == source && self.explicit_baseline.as_deref() == explicit_baseline
    }

    /// The variables this condition reads, aligned with [`Condition::evaluate`]'s
    /// `values`. `baseline` appears as the variable it stands for.
    pub fn variables(&self) -> &[String] {
        &self.vars
    }

    /// The identifiers as written; `baseline` stays `baseline`.
    pub fn identifiers(&self) -> &[String] {
        &self.idents
    }

    /// Evaluates with `values[i]` bound to `variables()[i]`.
    pub fn evaluate(&self, values: &[f64]) -> Result<bool, String> {
        let bindings = Bindings::new(&self.idents, values);
        self.tree
            .eval_boolean_with_context(&bindings)
            .map_err(|e| e.to_string())
    }

    /// For each comparison of a lone variable against an expression, the
    /// variable, the operator and the expression's current value: the
    /// thresholds a notification shows next to the values.
    pub fn thresholds(&self, values: &[f64]) -> Vec<Threshold> {
        let bindings = Bindings::new(&self.idents, values);
        let mut out = Vec::new();
        collect_thresholds(&self.tree, &bindings, &self.idents, &self.vars, &mut out);
        out
    }

    /// Evaluates once with neutral inputs, to reject non-boolean results,
    /// unknown functions and type errors at load time.
    fn type_check(&self) -> Result<(), ConditionError> {
        let ones = vec![1.0; self.idents.len()];
        let bindings = Bindings::new(&self.idents, &ones);
        match self.tree.eval_with_context(&bindings) {
            Ok(Value::Boolean(_)) => Ok(()),
            Ok(other) => Err(ConditionError::NotBoolean(format!(
                "it evaluates to {}",
                type_name(&other)
            ))),
            // evalexpr parses `a >` and only notices the gap when evaluating.
            Err(e @ evalexpr::EvalexprError::WrongOperatorArgumentAmount { .. }) => Err(
                ConditionError::Syntax(format!("incomplete expression: {e}")),
            ),
            Err(e) => Err(ConditionError::NotBoolean(format!(
                "it fails to evaluate: {e}"
            ))),
        }
    }
}

/// A comparison's right-hand side, evaluated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Threshold {
    /// The variable compared.
    pub variable: String,
    /// `>`, `<`, `>=`, `<=`, `==` or `!=`, as if the variable were on the left.
    pub op: &'static str,
    /// The value it is compared against.
    pub value: f64,
}

/// The comparisons a [`Threshold`] can hold.
const COMPARISONS: [&str; 6] = [">", "<", ">=", "<=", "==", "!="];

impl<'de> serde::Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Raw {
            variable: String,
            op: String,
            value: f64,
        }
        let raw = Raw::deserialize(d)?;
        let op = COMPARISONS
            .into_iter()
            .find(|c| *c == raw.op)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown comparison {:?}", raw.op)))?;
        Ok(Threshold {
            variable: raw.variable,
            op,
            value: raw.value,
        })
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Float(_) | Value::Int(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Tuple(_) => "a tuple",
        Value::Empty => "nothing",
    }
}

/// Derives `baseline` from the one `canary_*` variable the condition uses.
fn implied_baseline(idents: &[String], vocabulary: &Vocabulary) -> Result<String, ConditionError> {
    let canary: Vec<&String> = idents.iter().filter(|i| i.starts_with("canary_")).collect();
    match canary.as_slice() {
        [one] => {
            let stable = format!("stable_{}", &one["canary_".len()..]);
            if vocabulary.kind(&stable).is_some() {
                Ok(stable)
            } else {
                Err(ConditionError::Baseline(format!(
                    "`baseline` would be `{stable}`, which is not a known variable; set `baseline:` explicitly"
                )))
            }
        }
        [] => Err(ConditionError::Baseline(
            "`baseline` needs exactly one canary_* variable to compare against; set `baseline:` explicitly".into(),
        )),
        many => Err(ConditionError::Baseline(format!(
            "`baseline` is ambiguous: the condition compares {}; set `baseline:` explicitly",
            many.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn reject_assignments(node: &Node) -> Result<(), ConditionError> {
    use Operator::*;
    match node.operator() {
        Assign
        | AddAssign
        | SubAssign
        | MulAssign
        | DivAssign
        | ModAssign
        | ExpAssign
        | AndAssign
        | OrAssign
        | Chain
        | VariableIdentifierWrite { .. } => {
            return Err(ConditionError::Assignment(
                format!("`{node}`").trim().to_string(),
            ));
        }
        _ => {}
    }
    node.children().iter().try_for_each(reject_assignments)
}

fn floats_only(node: &mut Node) {
    if let Operator::Const { value } = node.operator_mut()
        && let Value::Int(i) = *value
    {
        *value = Value::Float(i as f64);
    }
    node.children_mut().iter_mut().for_each(floats_only);
}

/// Verdict strings become the numbers the judge's variables hold, so that
/// `judge_latency_verdict == "high"` compares numbers; any other string is
/// refused (compared with a number it would silently never be equal).
fn verdicts_as_numbers(node: &mut Node) -> Result<(), ConditionError> {
    if let Operator::Const { value } = node.operator_mut()
        && let Value::String(text) = &*value
    {
        match crate::judge::VERDICTS.iter().find(|v| v.as_str() == text) {
            Some(v) => *value = Value::Float(v.value()),
            None => return Err(ConditionError::Text(text.clone())),
        }
    }
    node.children_mut()
        .iter_mut()
        .try_for_each(verdicts_as_numbers)
}

fn collect_thresholds(
    node: &Node,
    ctx: &Bindings<'_>,
    idents: &[String],
    vars: &[String],
    out: &mut Vec<Threshold>,
) {
    use Operator::*;
    let op = match node.operator() {
        Gt => Some((">", "<")),
        Lt => Some(("<", ">")),
        Geq => Some((">=", "<=")),
        Leq => Some(("<=", ">=")),
        Eq => Some(("==", "==")),
        Neq => Some(("!=", "!=")),
        _ => None,
    };
    if let (Some((op, flipped)), [lhs, rhs]) = (op, node.children()) {
        let lone = |n: &Node| match n.operator() {
            VariableIdentifierRead { identifier } => idents.iter().position(|i| i == identifier),
            _ => None,
        };
        let found = match (lone(lhs), lone(rhs)) {
            (Some(i), _) => Some((i, op, rhs)),
            (None, Some(i)) => Some((i, flipped, lhs)),
            _ => None,
        };
        if let Some((i, op, other)) = found
            && let Ok(value) = other.eval_number_with_context(ctx)
        {
            out.push(Threshold {
                variable: vars[i].clone(),
                op,
                value,
            });
        }
    }
    for child in node.children() {
        collect_thresholds(child, ctx, idents, vars, out);
    }
}

/// Binds a condition's identifiers to values for one evaluation.
struct Bindings<'a> {
    idents: &'a [String],
    values: Vec<Value>,
}

impl<'a> Bindings<'a> {
    fn new(idents: &'a [String], values: &[f64]) -> Self {
        Bindings {
            idents,
            values: values.iter().map(|v| Value::Float(*v)).collect(),
        }
    }
}

impl Context for Bindings<'_> {
    fn get_value(&self, identifier: &str) -> Option<&Value> {
        let i = self.idents.iter().position(|i| i == identifier)?;
        self.values.get(i)
    }

    fn call_function(&self, identifier: &str, _argument: &Value) -> EvalexprResult<Value> {
        Err(evalexpr::EvalexprError::FunctionIdentifierNotFound(
            identifier.to_string(),
        ))
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(&mut self, _disabled: bool) -> EvalexprResult<()> {
        Err(evalexpr::EvalexprError::ContextNotMutable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(src: &str) -> Result<Condition, ConditionError> {
        Condition::compile(src, &Vocabulary::builtin(), None)
    }

    #[test]
    fn playbook_conditions_compile_and_evaluate() {
        let c = compile("canary_error_rate > 0.05").unwrap();
        assert_eq!(c.variables(), ["canary_error_rate"]);
        assert_eq!(c.evaluate(&[0.06]), Ok(true));
        assert_eq!(c.evaluate(&[0.05]), Ok(false));

        let c = compile("canary_p95_latency > 5000").unwrap();
        assert_eq!(c.evaluate(&[5000.5]), Ok(true));
    }

    #[test]
    fn baseline_is_the_stable_side_of_the_canary_metric() {
        let c = compile("canary_cost_per_request > 1.5 * baseline").unwrap();
        assert_eq!(
            c.variables(),
            ["canary_cost_per_request", "stable_cost_per_request"]
        );
        assert_eq!(c.identifiers(), ["canary_cost_per_request", "baseline"]);
        assert_eq!(c.evaluate(&[0.004, 0.002]), Ok(true));
        assert_eq!(c.evaluate(&[0.003, 0.002]), Ok(false));
        assert_eq!(
            c.thresholds(&[0.004, 0.002]),
            vec![Threshold {
                variable: "canary_cost_per_request".into(),
                op: ">",
                value: 0.003
            }]
        );
    }

    #[test]
    fn baseline_ambiguity_is_an_error() {
        let err =
            compile("canary_error_rate > baseline && canary_p95_latency > baseline").unwrap_err();
        assert!(err.to_string().contains("ambiguous"), "{err}");
        let err = compile("critical_errors > baseline").unwrap_err();
        assert!(err.to_string().contains("exactly one canary_"), "{err}");
        let ok = Condition::compile(
            "canary_error_rate > baseline && canary_p95_latency > 100",
            &Vocabulary::builtin(),
            Some("stable_error_rate"),
        )
        .unwrap();
        assert_eq!(ok.variables()[1], "stable_error_rate");
    }

    #[test]
    fn integers_compare_equal_to_floats() {
        let c = compile("canary_request_rate == 0").unwrap();
        assert_eq!(c.evaluate(&[0.0]), Ok(true));
        let c = compile("canary_requests / 2 > 0").unwrap();
        assert_eq!(
            c.evaluate(&[1.0]),
            Ok(true),
            "1/2 must not be integer division"
        );
    }

    #[test]
    fn unknown_variables_suggest_the_closest_name() {
        let err = compile("canary_eror_rate > 0.05").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable `canary_eror_rate`; did you mean `canary_error_rate`?"
        );
    }

    #[test]
    fn bad_conditions_are_rejected() {
        assert!(matches!(
            compile("canary_error_rate >"),
            Err(ConditionError::Syntax(_))
        ));
        assert!(matches!(
            compile("canary_error_rate = 1"),
            Err(ConditionError::Assignment(_))
        ));
        assert!(matches!(
            compile("canary_error_rate * 2"),
            Err(ConditionError::NotBoolean(_))
        ));
        assert!(matches!(
            compile("nosuchfn(canary_error_rate) > 1"),
            Err(ConditionError::NotBoolean(_))
        ));
    }

    #[test]
    fn builtin_functions_work() {
        let c = compile("math::abs(canary_error_rate - stable_error_rate) > 0.01").unwrap();
        assert_eq!(c.evaluate(&[0.01, 0.03]), Ok(true));
    }
}
