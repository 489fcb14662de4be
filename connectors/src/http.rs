//! What the HTTP receivers (PagerDuty, Slack, webhooks) share: one
//! long-lived `reqwest` client per connector (rustls, no OpenSSL), a timeout
//! around every request, and the mapping of answers and failures to
//! [`ConnectorError`]s.
//!
//! - 2xx: success.
//! - 5xx, 408, 429, timeouts, refused or reset connections:
//!   [`ConnectorError::Retriable`]; a `Retry-After` header is quoted in the
//!   message (`retry after 7s`).
//! - Other 4xx and 3xx (redirects are not followed: configure the final
//!   URL): [`ConnectorError::Permanent`], with the receiver's answer
//!   (at most [`MAX_BODY_IN_ERROR`] bytes).
//!
//! Messages never contain the URL: for Slack and many webhooks the URL is
//! the secret.

use std::time::{Duration, SystemTime};

use canaryd_rules::Span;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};

use crate::connector::ConnectorError;
use crate::message::truncate;
use crate::retry::parse_retry_after;

/// How much of a receiver's answer an error message quotes, in bytes.
pub const MAX_BODY_IN_ERROR: usize = 300;

/// The default limit for one request, from connecting to the last byte of
/// the answer.
pub fn default_timeout() -> Span {
    Span::seconds(10)
}

/// The default limit for establishing a connection (TCP and TLS).
pub fn default_connect_timeout() -> Span {
    Span::seconds(5)
}

/// A [`Span`] as a [`Duration`]; zero for a negative span.
pub fn duration(span: Span) -> Duration {
    Duration::from_millis(u64::try_from(span.millis()).unwrap_or(0))
}

/// Problems with a timeout pair: each must be longer than 0s, and the
/// connect timeout no longer than the total.
pub fn check_timeouts(timeout: Span, connect_timeout: Span) -> Vec<String> {
    let mut problems = Vec::new();
    if timeout.millis() <= 0 {
        problems.push("timeout must be longer than 0s".to_string());
    }
    if connect_timeout.millis() <= 0 {
        problems.push("connect_timeout must be longer than 0s".to_string());
    } else if connect_timeout > timeout && timeout.millis() > 0 {
        problems.push(format!(
            "connect_timeout ({connect_timeout}) is longer than timeout ({timeout})"
        ));
    }
    problems
}

/// Problems with a URL written inline in the config: it must parse and be
/// `http` or `https`. `field` names the setting.
pub fn check_url(field: &str, url: &str) -> Vec<String> {
    match parse_url(url) {
        Ok(_) => Vec::new(),
        Err(why) => vec![format!("{field} {why}")],
    }
}

/// Parses an `http` or `https` URL. The error does not repeat the URL (it
/// may be a secret).
pub fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    if url.trim().is_empty() {
        return Err("is empty".to_string());
    }
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host_str().is_some() => Ok(parsed),
        "http" | "https" => Err("has no host".to_string()),
        other => Err(format!("must be http or https, not {other}")),
    }
}

/// Builds the one client a connector keeps: rustls, the given connect
/// timeout and total timeout, no redirects, `User-Agent: canaryd/VERSION`.
pub fn client(connect_timeout: Duration, timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("canaryd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| chain(&e))
}

/// A successful (2xx) answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// The body as text.
    pub body: String,
}

/// Sends `request` and reads the whole answer within `timeout`. `what`
/// names the receiver in messages, e.g. `Slack receiver slack-oncall`.
/// A 2xx answer is `Ok`; anything else is classified by [`classify_status`]
/// or [`classify_error`].
pub async fn send(
    what: &str,
    request: RequestBuilder,
    timeout: Duration,
) -> Result<Answer, ConnectorError> {
    let call = async {
        let response = request.send().await?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.text().await?;
        Ok::<_, reqwest::Error>((status, retry_after, body))
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(ConnectorError::retriable(format!(
            "timeout: {what} did not answer within {}",
            span(timeout)
        ))),
        Ok(Err(e)) if e.is_timeout() => Err(ConnectorError::retriable(format!(
            "timeout: {what} did not answer within {}",
            span(timeout)
        ))),
        Ok(Err(e)) => Err(classify_error(what, e)),
        Ok(Ok((status, _, body))) if status.is_success() => Ok(Answer { status, body }),
        Ok(Ok((status, retry_after, body))) => {
            Err(classify_status(what, status, retry_after.as_deref(), &body))
        }
    }
}

/// The `Retry-After` header, as `7s` for a number of seconds or as sent
/// (an HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if value.is_empty() {
        return None;
    }
    Some(match value.parse::<u64>() {
        Ok(seconds) => format!("{seconds}s"),
        Err(_) => value.to_string(),
    })
}

/// Classifies a non-2xx answer: 5xx, 408 and 429 are retriable, every other
/// status permanent. `body` is quoted, shortened. A `Retry-After` (as
/// [`retry_after`] gives it) is quoted and becomes the error's
/// [`ConnectorError::retry_after`], which the retry policy honours.
pub fn classify_status(
    what: &str,
    status: StatusCode,
    retry_after: Option<&str>,
    body: &str,
) -> ConnectorError {
    let quoted = quote(body);
    let code = status.as_u16();
    if status.is_server_error() || code == 408 || code == 429 {
        let retry = retry_after
            .map(|r| format!("; retry after {r}"))
            .unwrap_or_default();
        // `retry_after` writes a number of seconds as `7s`.
        let wait = retry_after
            .and_then(|r| parse_retry_after(r.strip_suffix('s').unwrap_or(r), SystemTime::now()));
        ConnectorError::Retriable {
            reason: format!("{what} answered {status}{retry}{quoted}"),
            retry_after: wait,
        }
    } else if status.is_redirection() {
        ConnectorError::Permanent(format!(
            "{what} answered {status} (a redirect, which canaryd does not follow: configure the final URL){quoted}"
        ))
    } else if status.is_client_error() {
        let hint = match code {
            401 | 403 => " (check the receiver's credentials)",
            404 | 410 => " (check the receiver's URL)",
            _ => "",
        };
        ConnectorError::Permanent(format!(
            "{what} refused the request with {status}{hint}{quoted}"
        ))
    } else {
        ConnectorError::retriable(format!("{what} answered an unexpected {status}{quoted}"))
    }
}

/// Classifies a request that got no answer: timeouts and connection
/// failures (refused, reset, DNS) are retriable, a request that cannot be
/// built is permanent.
pub fn classify_error(what: &str, error: reqwest::Error) -> ConnectorError {
    // The URL may be the secret (Slack, webhooks): never put it in a message.
    let error = error.without_url();
    let text = chain(&error);
    if error.is_timeout() {
        ConnectorError::retriable(format!("timeout: {what} did not answer in time: {text}"))
    } else if error.is_builder() {
        ConnectorError::Permanent(format!("cannot build the request to {what}: {text}"))
    } else if error.is_redirect() {
        ConnectorError::Permanent(format!("{what} redirected the request: {text}"))
    } else if error.is_connect() {
        ConnectorError::retriable(format!("cannot connect to {what}: {text}"))
    } else {
        // Reset connections, truncated answers, protocol errors.
        ConnectorError::retriable(format!("request to {what} failed: {text}"))
    }
}

/// An error and its sources, `outer: inner: innermost`, without repeats.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

fn quote(body: &str) -> String {
    let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        String::new()
    } else {
        format!(": {}", truncate(&flat, MAX_BODY_IN_ERROR))
    }
}

fn span(d: Duration) -> Span {
    Span(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;

    #[test]
    fn statuses_are_classified() {
        let s = |c: u16| StatusCode::from_u16(c).unwrap();
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(
                classify_status("x", s(code), None, "").is_retriable(),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 410, 413, 422, 301] {
            assert!(
                !classify_status("x", s(code), None, "").is_retriable(),
                "{code}"
            );
        }
        let e = classify_status("PagerDuty receiver pd", s(429), Some("7s"), "slow down");
        assert_eq!(
            e.to_string(),
            "retriable: PagerDuty receiver pd answered 429 Too Many Requests; retry after 7s: slow down"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        let e = classify_status("x", s(503), Some(&in_a_minute), "");
        let wait = e.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(61),
            "{wait:?}"
        );
        assert_eq!(classify_status("x", s(503), None, "").retry_after(), None);
        let long = "x".repeat(1000);
        let e = classify_status("x", s(400), None, &long);
        assert!(e.to_string().len() < 400, "{e}");
    }

    #[test]
    fn urls_and_timeouts_are_checked() {
        assert!(parse_url("https://events.pagerduty.com/v2/enqueue").is_ok());
        assert!(parse_url("ftp://x").unwrap_err().contains("http or https"));
        assert!(parse_url("").unwrap_err().contains("empty"));
        assert!(
            parse_url("hooks.slack.com/x")
                .unwrap_err()
                .contains("not a URL")
        );
        assert!(check_timeouts(Span::seconds(10), Span::seconds(5)).is_empty());
        assert_eq!(check_timeouts(Span(0), Span::seconds(5)).len(), 1);
        assert_eq!(check_timeouts(Span::seconds(1), Span::seconds(5)).len(), 1);
    }
}
