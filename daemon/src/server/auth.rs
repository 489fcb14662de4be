//! Credentials for the endpoints that change things: bearer token or HTTP
//! basic auth, the two Alertmanager's `http_config` can send.

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use serde::Deserialize;
use subtle::{Choice, ConstantTimeEq};

use canaryd_connectors::SecretValue as Value;

/// `http.auth:` in the config file. Secrets come from `{env: NAME}` or
/// `{file: PATH}`, never inline.
///
/// ```yaml
/// auth: {bearer: {env: CANARYD_HTTP_TOKEN}}          # or {bearer: {token: {env: …}}}
/// auth: {basic: {username: alertmanager, password: {file: /var/run/secrets/canaryd/password}}}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawAuth")]
pub enum AuthConfig {
    /// `Authorization: Bearer TOKEN`.
    Bearer {
        /// The token.
        token: Value,
    },
    /// `Authorization: Basic …` (RFC 7617).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Value,
    },
}

/// `auth:` as written: exactly one of `bearer:` and `basic:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    bearer: Option<RawBearer>,
    #[serde(default)]
    basic: Option<RawBasic>,
}

/// `bearer:` takes the secret itself (`{env: X}`, `{file: P}`) or `{token: …}`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a token as {env: NAME}, {file: PATH} or {token: {env: NAME}}"
)]
enum RawBearer {
    Token(TokenForm),
    Secret(Value),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenForm {
    token: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    username: String,
    password: Value,
}

impl TryFrom<RawAuth> for AuthConfig {
    type Error = &'static str;

    fn try_from(raw: RawAuth) -> Result<Self, Self::Error> {
        match (raw.bearer, raw.basic) {
            (Some(RawBearer::Token(TokenForm { token }) | RawBearer::Secret(token)), None) => {
                Ok(AuthConfig::Bearer { token })
            }
            (None, Some(RawBasic { username, password })) => {
                Ok(AuthConfig::Basic { username, password })
            }
            _ => Err("auth: give exactly one of `bearer:` and `basic:`"),
        }
    }
}

impl AuthConfig {
    /// Inline secrets, which `canaryd check` refuses like any other.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            AuthConfig::Bearer { token } if token.is_inline() => out.push(
                "http.auth.bearer: the token must come from {env: NAME} or {file: PATH}, not inline"
                    .to_string(),
            ),
            AuthConfig::Basic { username, password } => {
                if username.is_empty() || username.contains(':') {
                    out.push(
                        "http.auth.basic.username: must be non-empty and without `:`".to_string(),
                    );
                }
                if password.is_inline() {
                    out.push(
                        "http.auth.basic.password: must come from {env: NAME} or {file: PATH}, not inline"
                            .to_string(),
                    );
                }
            }
            AuthConfig::Bearer { .. } => {}
        }
        out
    }

    /// Reads the secret, once, at start-up.
    pub(super) fn resolve(&self) -> Result<Credentials, String> {
        match self {
            AuthConfig::Bearer { token } => {
                let token = token
                    .resolve()
                    .map_err(|e| format!("http.auth.bearer: {e}"))?;
                if token.trim().is_empty() {
                    return Err("http.auth.bearer: the token is empty".into());
                }
                Ok(Credentials::Bearer(token.into_bytes()))
            }
            AuthConfig::Basic { username, password } => {
                let password = password
                    .resolve()
                    .map_err(|e| format!("http.auth.basic.password: {e}"))?;
                if password.is_empty() {
                    return Err("http.auth.basic.password: the password is empty".into());
                }
                Ok(Credentials::Basic {
                    username: username.clone().into_bytes(),
                    password: password.into_bytes(),
                })
            }
        }
    }
}

/// Resolved credentials.
pub(super) enum Credentials {
    Bearer(Vec<u8>),
    Basic {
        username: Vec<u8>,
        password: Vec<u8>,
    },
}

impl Credentials {
    /// The `WWW-Authenticate` challenge of a 401.
    pub(super) fn challenge(&self) -> &'static str {
        match self {
            Credentials::Bearer(_) => r#"Bearer realm="canaryd""#,
            Credentials::Basic { .. } => r#"Basic realm="canaryd", charset="UTF-8""#,
        }
    }

    /// Whether the request's `Authorization` header carries these credentials.
    pub(super) fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, rest)) = value.trim().split_once(' ') else {
            return false;
        };
        let rest = rest.trim();
        match self {
            Credentials::Bearer(token) => {
                scheme.eq_ignore_ascii_case("bearer") && equal(rest.as_bytes(), token)
            }
            Credentials::Basic { username, password } => {
                if !scheme.eq_ignore_ascii_case("basic") {
                    return false;
                }
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                    return false;
                };
                let Some(colon) = decoded.iter().position(|&b| b == b':') else {
                    return false;
                };
                let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
                bool::from(equal_choice(user, username) & equal_choice(pass, password))
            }
        }
    }
}

/// Constant-time equality; the time depends on the length of `expected` only.
fn equal(given: &[u8], expected: &[u8]) -> bool {
    bool::from(equal_choice(given, expected))
}

fn equal_choice(given: &[u8], expected: &[u8]) -> Choice {
    // Compare `expected.len()` bytes whatever the length of `given`, so
    // that the comparison does not reveal how long the secret is.
    let mut padded = vec![0u8; expected.len()];
    for (p, g) in padded.iter_mut().zip(given) {
        *p = *g;
    }
    let same_len = (given.len() as u64).ct_eq(&(expected.len() as u64));
    same_len & padded.ct_eq(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        h
    }

    #[test]
    fn both_forms_of_bearer_and_basic_parse() {
        let short: AuthConfig = serde_yaml_ng::from_str("bearer: {env: X}").unwrap();
        let long: AuthConfig = serde_yaml_ng::from_str("bearer: {token: {env: X}}").unwrap();
        let file: AuthConfig = serde_yaml_ng::from_str("bearer: {file: /p}").unwrap();
        let expect = AuthConfig::Bearer {
            token: Value::Env { env: "X".into() },
        };
        assert_eq!(short, expect);
        assert_eq!(long, expect);
        assert_eq!(
            file,
            AuthConfig::Bearer {
                token: Value::File { file: "/p".into() }
            }
        );
        let basic: AuthConfig =
            serde_yaml_ng::from_str("basic: {username: am, password: {file: /p}}").unwrap();
        assert_eq!(
            basic,
            AuthConfig::Basic {
                username: "am".into(),
                password: Value::File { file: "/p".into() }
            }
        );
        assert!(serde_yaml_ng::from_str::<AuthConfig>("digest: {env: X}").is_err());
        assert!(serde_yaml_ng::from_str::<AuthConfig>("{}").is_err());
        assert!(
            serde_yaml_ng::from_str::<AuthConfig>(
                "{bearer: {env: X}, basic: {username: a, password: {env: Y}}}"
            )
            .is_err()
        );
        assert!(
            serde_yaml_ng::from_str::<AuthConfig>(
                "basic: {username: a, password: {env: X}, realm: r}"
            )
            .is_err()
        );
    }

    #[test]
    fn inline_secrets_are_problems() {
        let inline: AuthConfig = serde_yaml_ng::from_str("bearer: {token: hunter2}").unwrap();
        assert_eq!(inline.problems().len(), 1, "{:?}", inline.problems());
        let basic: AuthConfig =
            serde_yaml_ng::from_str("basic: {username: 'a:b', password: hunter2}").unwrap();
        assert_eq!(basic.problems().len(), 2, "{:?}", basic.problems());
    }

    #[test]
    fn credentials_are_checked_exactly() {
        let bearer = Credentials::Bearer(b"s3cret".to_vec());
        assert!(bearer.accepts(&headers("Bearer s3cret")));
        assert!(bearer.accepts(&headers("bearer s3cret")));
        assert!(!bearer.accepts(&headers("Bearer s3cre")));
        assert!(!bearer.accepts(&headers("Bearer s3cret2")));
        assert!(!bearer.accepts(&headers("Basic s3cret")));
        assert!(!bearer.accepts(&HeaderMap::new()));
        let basic = Credentials::Basic {
            username: b"am".to_vec(),
            password: b"pw:with:colons".to_vec(),
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(basic.accepts(&headers(&format!("Basic {}", b64("am:pw:with:colons")))));
        assert!(!basic.accepts(&headers(&format!("Basic {}", b64("am:pw")))));
        assert!(!basic.accepts(&headers(&format!("Basic {}", b64("xx:pw:with:colons")))));
        assert!(!basic.accepts(&headers("Basic not-base64!")));
    }
}
