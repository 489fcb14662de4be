//! Rollout requests for a model another replica carries.
//!
//! One replica, the owner of the model's partition, carries a rollout;
//! behind a Service a request may reach any replica. A replica that does
//! not carry the model asks the others, which announce themselves on the
//! shared silences topic ([`Replicas`]): the first that answers other than
//! 404 answers the request, named in [`REPLICA`]. A forwarded request
//! carries [`FORWARDED`] and is never forwarded again. The list of
//! rollouts gathers every replica's.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Marks a request one replica sends another.
pub const FORWARDED: &str = "x-canaryd-forwarded";

/// Names the replica that answered a forwarded request.
pub const REPLICA: &str = "x-canaryd-replica";

/// How long another replica may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends requests on to the other replicas.
pub(super) struct Forwarder {
    client: reqwest::Client,
}

impl Forwarder {
    pub(super) fn new() -> Result<Forwarder, String> {
        let client = reqwest::Client::builder()
            .timeout(PEER_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("cannot build the client for other replicas: {e}"))?;
        Ok(Forwarder { client })
    }

    /// Whether the request came from another replica.
    pub(super) fn forwarded(headers: &HeaderMap) -> bool {
        headers.contains_key(FORWARDED)
    }

    /// `method` on `peer` at the path of `segments`, each escaped (a model's
    /// name may hold any character).
    fn request(
        &self,
        method: Method,
        peer: &str,
        segments: &[&str],
        headers: &HeaderMap,
    ) -> Option<reqwest::RequestBuilder> {
        let mut url = reqwest::Url::parse(&format!("http://{peer}/")).ok()?;
        url.path_segments_mut().ok()?.clear().extend(segments);
        let mut request = self.client.request(method, url).header(FORWARDED, "1");
        // The other replica checks the same credentials.
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(value) = headers.get(&name) {
                request = request.header(name, value);
            }
        }
        Some(request)
    }

    /// The answer of the first replica in `peers` that answers `method` at
    /// the path of `segments` other than 404; `None` when none does.
    pub(super) async fn first(
        &self,
        peers: &[String],
        method: Method,
        segments: &[&str],
        headers: &HeaderMap,
        body: Bytes,
    ) -> Option<Response> {
        for peer in peers {
            let Some(request) = self.request(method.clone(), peer, segments, headers) else {
                tracing::warn!(%peer, "another replica's address is not usable");
                continue;
            };
            let sent = request.body(body.clone()).send().await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "another replica did not answer a forwarded request");
                    continue;
                }
            };
            let status = response.status();
            if status == StatusCode::NOT_FOUND {
                continue;
            }
            let text = match response.text().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "another replica's answer was cut off");
                    continue;
                }
            };
            tracing::info!(%peer, path = %segments.join("/"), %status, "answered by the replica that carries the model");
            let mut answer = (status, text).into_response();
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = HeaderValue::from_str(peer) {
                answer.headers_mut().insert(REPLICA, v);
            }
            return Some(answer);
        }
        None
    }

    /// `GET` the path of `segments` from every replica in `peers`: the
    /// items of each answer that is a JSON list.
    pub(super) async fn gather(
        &self,
        peers: &[String],
        segments: &[&str],
        headers: &HeaderMap,
    ) -> Vec<Value> {
        let mut items = Vec::new();
        for peer in peers {
            let Some(request) = self.request(Method::GET, peer, segments, headers) else {
                tracing::warn!(%peer, "another replica's address is not usable");
                continue;
            };
            let answer = match request.send().await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await,
                Ok(r) => {
                    tracing::warn!(%peer, status = %r.status(), "another replica refused to list its rollouts");
                    continue;
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(Value::Array(list)) => items.extend(list),
                Ok(_) => tracing::warn!(%peer, "another replica's rollouts are not a list"),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "another replica did not list its rollouts")
                }
            }
        }
        items
    }
}

/// How long a replica's announcement holds without a newer one: three
/// missed heartbeats.
pub const PRESENCE: Duration = Duration::from_secs(90);

/// The other replicas' HTTP addresses (`host:port`) and when each last
/// announced itself, as the shared topic says.
#[derive(Debug, Default)]
pub(super) struct Replicas(std::collections::BTreeMap<String, canaryd_rules::Timestamp>);

impl Replicas {
    /// A replica announced itself at `seen`; `None` when it stopped.
    pub(super) fn update(&mut self, address: String, seen: Option<canaryd_rules::Timestamp>) {
        match seen {
            Some(t) => {
                let latest = self.0.entry(address).or_insert(t);
                *latest = (*latest).max(t);
            }
            None => {
                self.0.remove(&address);
            }
        }
    }

    /// The replicas heard from within [`PRESENCE`] of `now`, newest first.
    pub(super) fn live(&self, now: canaryd_rules::Timestamp) -> Vec<String> {
        let presence = i64::try_from(PRESENCE.as_millis()).unwrap_or(i64::MAX);
        let mut live: Vec<(&String, &canaryd_rules::Timestamp)> = self
            .0
            .iter()
            .filter(|(_, seen)| now.millis().saturating_sub(seen.millis()) <= presence)
            .collect();
        live.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        live.into_iter().map(|(a, _)| a.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use canaryd_rules::Timestamp;

    use super::*;

    #[test]
    fn a_forwarded_path_escapes_the_models_name_and_carries_the_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let request = Forwarder::new()
            .unwrap()
            .request(
                Method::POST,
                "10.0.0.1:9464",
                &["api", "v1", "rollouts", "a/b ?c", "pause"],
                &headers,
            )
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            request.url().as_str(),
            "http://10.0.0.1:9464/api/v1/rollouts/a%2Fb%20%3Fc/pause"
        );
        assert_eq!(request.headers()[header::AUTHORIZATION], "Bearer t");
        assert!(request.headers().contains_key(FORWARDED));
    }

    #[test]
    fn replicas_are_live_while_heard_from_and_gone_when_they_stop() {
        let mut r = Replicas::default();
        r.update("10.0.0.1:9464".into(), Some(Timestamp(1_000)));
        r.update("10.0.0.2:9464".into(), Some(Timestamp(50_000)));
        // An older announcement never moves one back.
        r.update("10.0.0.2:9464".into(), Some(Timestamp(2_000)));
        assert_eq!(
            r.live(Timestamp(60_000)),
            ["10.0.0.2:9464", "10.0.0.1:9464"]
        );
        assert_eq!(r.live(Timestamp(100_000)), ["10.0.0.2:9464"]);
        r.update("10.0.0.2:9464".into(), None);
        assert!(
            r.live(Timestamp(60_000))
                .contains(&"10.0.0.1:9464".to_string())
        );
        assert_eq!(r.live(Timestamp(60_000)).len(), 1);
    }
}
