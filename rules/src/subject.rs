//! How a subject (the labels a rule groups by, e.g. `model=summarizer`)
//! is written: [`Subject`], the one `Display` for it. Idempotency keys,
//! rate-limit keys, logs and messages all use it, so they agree.

use std::collections::BTreeMap;
use std::fmt;

/// A subject's labels, displayed as `k=v,k=v` in label order; empty labels
/// display as nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject<'a>(pub &'a BTreeMap<String, String>);

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_written_in_order() {
        let mut labels = BTreeMap::new();
        assert_eq!(Subject(&labels).to_string(), "");
        labels.insert("model".to_string(), "summarizer".to_string());
        assert_eq!(Subject(&labels).to_string(), "model=summarizer");
        labels.insert("env".to_string(), "prod".to_string());
        assert_eq!(Subject(&labels).to_string(), "env=prod,model=summarizer");
    }
}
