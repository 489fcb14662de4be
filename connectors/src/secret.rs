//! Values that may be secrets (tokens, routing keys, webhook URLs, SMTP
//! passwords): written inline, or read from the environment or a file (a
//! mounted Kubernetes Secret), so that secrets never have to live in a
//! ConfigMap.
//!
//! ```yaml
//! routing_key: {env: PD_ROUTING_KEY}
//! url: {file: /var/run/secrets/slack/oncall-webhook}
//! password: "inline, for tests only"
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// A configuration value that may be a secret, and where it comes from.
///
/// Neither its `Debug` nor its `Display` ever shows an inline value, so a
/// config logged whole leaks nothing; [`SecretValue::resolve`] is the only
/// way to the value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    /// Written in the config file.
    Inline(String),
    /// `{env: NAME}`: read from an environment variable when the receiver is built.
    Env {
        /// The variable's name.
        env: String,
    },
    /// `{file: PATH}`: read from a file when the receiver is built; one
    /// trailing newline is dropped.
    File {
        /// The file's path.
        file: PathBuf,
    },
}

impl SecretValue {
    /// The value itself, or why it cannot be had.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretValue::Inline(v) => Ok(v.clone()),
            SecretValue::Env { env } => {
                std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))
            }
            SecretValue::File { file } => std::fs::read_to_string(file)
                .map(|s| match s.strip_suffix('\n') {
                    Some(t) => t.strip_suffix('\r').unwrap_or(t).to_string(),
                    None => s,
                })
                .map_err(|e| format!("cannot read {}: {e}", file.display())),
        }
    }

    /// Whether the value is written in the config file itself.
    pub fn is_inline(&self) -> bool {
        matches!(self, SecretValue::Inline(_))
    }

    /// The inline text, if the value is inline.
    pub fn inline(&self) -> Option<&str> {
        match self {
            SecretValue::Inline(v) => Some(v),
            _ => None,
        }
    }

    /// Resolves a relative `{file: PATH}` against `dir` (the config file's
    /// directory).
    pub fn with_base_dir(self, dir: &Path) -> SecretValue {
        match self {
            SecretValue::File { file } if file.is_relative() => SecretValue::File {
                file: dir.join(file),
            },
            other => other,
        }
    }

    /// Problems visible without reading the secret: an empty inline value,
    /// an empty variable name or path. `field` names the setting.
    pub fn check(&self, field: &str) -> Vec<String> {
        let empty = match self {
            SecretValue::Inline(v) => v.trim().is_empty(),
            SecretValue::Env { env } => env.trim().is_empty(),
            SecretValue::File { file } => file.as_os_str().is_empty(),
        };
        if empty {
            vec![format!("{field} is empty")]
        } else {
            Vec::new()
        }
    }

    /// Where the value comes from, without the value: `inline`,
    /// `env SLACK_URL` or `file /secrets/x`.
    pub fn source(&self) -> String {
        match self {
            SecretValue::Inline(_) => "inline".to_string(),
            SecretValue::Env { env } => format!("env {env}"),
            SecretValue::File { file } => format!("file {}", file.display()),
        }
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::Inline(_) => f.write_str("SecretValue::Inline(<redacted>)"),
            SecretValue::Env { env } => write!(f, "SecretValue::Env({env})"),
            SecretValue::File { file } => write!(f, "SecretValue::File({})", file.display()),
        }
    }
}

/// Where the value comes from, never the value: as [`SecretValue::source`].
impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source())
    }
}

const EXPECTED: &str = "a string, {env: NAME} or {file: PATH}";

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = SecretValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretValue, E> {
                Ok(SecretValue::Inline(v.to_string()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<SecretValue, E> {
                Ok(SecretValue::Inline(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretValue, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(format!(
                        "empty mapping: expected {EXPECTED}"
                    )));
                };
                let value = match key.as_str() {
                    "env" => SecretValue::Env {
                        env: map.next_value()?,
                    },
                    "file" => SecretValue::File {
                        file: map.next_value()?,
                    },
                    other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "unexpected `{extra}`: expected {EXPECTED}, with one key"
                    )));
                }
                Ok(value)
            }
        }

        d.deserialize_any(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;

    #[test]
    fn the_three_shapes_deserialize() {
        let v: SecretValue = serde_yaml_ng::from_str("abc").unwrap();
        assert_eq!(v, SecretValue::Inline("abc".into()));
        let v: SecretValue = serde_yaml_ng::from_str("{env: PD_KEY}").unwrap();
        assert_eq!(
            v,
            SecretValue::Env {
                env: "PD_KEY".into()
            }
        );
        let v: SecretValue = serde_yaml_ng::from_str("{file: /secrets/x}").unwrap();
        assert_eq!(
            v,
            SecretValue::File {
                file: "/secrets/x".into()
            }
        );
        let e = serde_yaml_ng::from_str::<SecretValue>("{envv: X}").unwrap_err();
        assert!(e.to_string().contains("envv"), "{e}");
        let e = serde_yaml_ng::from_str::<SecretValue>("{env: X, file: y}").unwrap_err();
        assert!(e.to_string().contains("one key"), "{e}");
        let e = serde_yaml_ng::from_str::<SecretValue>("[1]").unwrap_err();
        assert!(e.to_string().contains("{env: NAME}"), "{e}");
    }

    #[test]
    fn values_resolve_from_their_source_and_debug_hides_them() {
        let dir = std::env::temp_dir().join(format!("canaryd-conn-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        let relative = SecretValue::File { file: "pw".into() }.with_base_dir(&dir);
        assert_eq!(relative.resolve().unwrap(), "s3cret");
        let inline = SecretValue::Inline("hunter2".into());
        assert_eq!(inline.resolve().unwrap(), "hunter2");
        assert!(!format!("{inline:?}").contains("hunter2"));
        assert!(!format!("{inline:#?}").contains("hunter2"));
        assert_eq!(format!("{inline}"), "inline");
        // Inside a larger structure, as a config is logged.
        let nested = Some(vec![inline.clone()]);
        assert!(!format!("{nested:?}").contains("hunter2"));
        let missing = SecretValue::Env {
            env: "CANARYD_TEST_SURELY_UNSET".into(),
        };
        assert!(missing.resolve().unwrap_err().contains("is not set"));
        assert_eq!(
            SecretValue::Inline(" ".into()).check("x.password"),
            vec!["x.password is empty"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
