//! Values that may be secrets: written inline, or read from the environment
//! or a file (a mounted Kubernetes Secret), so that secrets never have to
//! live in a ConfigMap.

use std::path::PathBuf;

use serde::Deserialize;

/// A configuration value and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Written in the config file. Refused for secret-looking keys.
    Inline(String),
    /// `{env: NAME}`: read from an environment variable at start-up.
    Env {
        /// The variable's name.
        env: String,
    },
    /// `{file: PATH}`: read from a file at start-up; one trailing newline is dropped.
    File {
        /// The file's path.
        file: PathBuf,
    },
}

impl Value {
    /// The value itself.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Value::Inline(v) => Ok(v.clone()),
            Value::Env { env } => {
                std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))
            }
            Value::File { file } => std::fs::read_to_string(file)
                .map(|s| s.strip_suffix('\n').map(str::to_string).unwrap_or(s))
                .map_err(|e| format!("cannot read {}: {e}", file.display())),
        }
    }

    /// Whether the value is written in the config file itself.
    pub fn is_inline(&self) -> bool {
        matches!(self, Value::Inline(_))
    }
}

/// Whether a client property holds a secret and so must not be inline.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "private.key", "key.pem", "token"]
        .iter()
        .any(|s| k.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_resolve_from_their_source() {
        let dir = std::env::temp_dir().join(format!("canaryd-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(Value::File { file }.resolve().unwrap(), "s3cret");
        assert_eq!(Value::Inline("x".into()).resolve().unwrap(), "x");
        let missing = Value::Env {
            env: "CANARYD_TEST_SURELY_UNSET".into(),
        };
        assert!(missing.resolve().unwrap_err().contains("is not set"));
    }

    #[test]
    fn secret_keys_are_recognised() {
        assert!(is_secret_key("sasl.password"));
        assert!(is_secret_key("ssl.key.password"));
        assert!(is_secret_key("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_key("security.protocol"));
        assert!(!is_secret_key("sasl.username"));
    }
}
