//! An authenticated session with one upstream for one tenant: challenge/authenticate with the node's
//! own Ed25519 key (spec §2, §6.2), token reuse until shortly before `exp`, one re-authentication on
//! 401, and retries with exponential backoff for transient failures only (unreachable, 429, 502–504).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use ed25519_dalek::Signer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{Mutex, OnceCell};

use super::transport::{
    ByteStream, Method, Transport, TransportError, TransportRequest, TransportResponse,
};
use crate::crypto::keys::Identity;
use crate::store::StoreError;
use crate::wire::{
    AuthenticateRequest, AuthenticateResponse, ChallengeRequest, ChallengeResponse, ErrorBody,
    ServerInfo, StoreKind,
};

/// Who this node is towards its upstreams, and how patient it is.
#[derive(Clone)]
pub struct SessionOptions {
    /// Username in the challenge: the node's name, registered as a trusted server upstream.
    pub username: String,
    pub identity: Arc<Identity>,
    /// Sent along in the via header for cycle detection.
    pub node_id: String,
    pub max_attempts: u32,
    pub backoff_base: Duration,
}

struct Token {
    value: String,
    refresh_at: Instant,
}

pub struct RemoteSession {
    upstream: String,
    transport: Arc<dyn Transport>,
    tenant: String,
    options: SessionOptions,
    token: Mutex<Option<Token>>,
    body_limit: OnceCell<u64>,
    requests: AtomicU64,
}

/// Body limit assumed when the upstream does not publish one (the reference default).
const DEFAULT_BODY_LIMIT: u64 = 5 * 1024 * 1024;
/// Longest wait between two attempts, whatever Retry-After says.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl RemoteSession {
    pub fn new(
        upstream: &str,
        transport: Arc<dyn Transport>,
        tenant: &str,
        options: SessionOptions,
    ) -> Self {
        RemoteSession {
            upstream: upstream.to_string(),
            transport,
            tenant: tenant.to_string(),
            options,
            token: Mutex::new(None),
            body_limit: OnceCell::new(),
            requests: AtomicU64::new(0),
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn identity(&self) -> &Identity {
        &self.options.identity
    }

    /// HTTP requests sent so far (all attempts), for tests and benchmarks.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn error(&self, message: String, status: Option<u16>, transient: bool) -> StoreError {
        StoreError::Upstream {
            upstream: self.upstream.clone(),
            message,
            status,
            transient,
        }
    }

    fn sync_path(&self, kind: StoreKind, op: &str) -> String {
        format!("/{}/sync/{}/{op}", self.tenant, kind.as_str())
    }

    /// `POST /:tenant/sync/:kind/:op` with a JSON body, decoded JSON answer.
    pub async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: StoreKind,
        op: &str,
        request: &Req,
    ) -> Result<Resp, StoreError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("request serialises"));
        let response = self
            .call(
                Method::Post,
                self.sync_path(kind, op),
                Some(("application/json", body)),
            )
            .await?;
        self.decode(op, &response.body.to_bytes())
    }

    /// `POST` with a raw body (binary framing); the response is returned as is.
    pub async fn post_bytes(
        &self,
        kind: StoreKind,
        op: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<TransportResponse, StoreError> {
        self.call(
            Method::Post,
            self.sync_path(kind, op),
            Some((content_type, body)),
        )
        .await
    }

    /// `GET /:tenant/sync/:kind/:op?query`.
    pub async fn get_json<Resp: DeserializeOwned>(
        &self,
        kind: StoreKind,
        op: &str,
        query: &str,
    ) -> Result<Resp, StoreError> {
        let path = format!("{}?{query}", self.sync_path(kind, op));
        let response = self.call(Method::Get, path, None).await?;
        self.decode(op, &response.body.to_bytes())
    }

    pub fn decode<Resp: DeserializeOwned>(
        &self,
        op: &str,
        body: &[u8],
    ) -> Result<Resp, StoreError> {
        serde_json::from_slice(body)
            .map_err(|e| self.error(format!("malformed {op} response: {e}"), None, false))
    }

    /// Opens the tenant's SSE change feed for one store kind (spec §4.17).
    pub async fn open_events(&self, kind: StoreKind) -> Result<ByteStream, StoreError> {
        let token = self.token(false).await?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let request = TransportRequest {
            method: Method::Get,
            path: format!(
                "/{}/sync/{}/events?dbId=directory",
                self.tenant,
                kind.as_str()
            ),
            bearer: Some(token),
            body: None,
            via: super::outgoing_via(&self.options.node_id),
        };
        let stream = self
            .transport
            .stream(request)
            .await
            .map_err(|e| self.error(e.to_string(), None, true))?;
        match stream.status {
            200 => Ok(stream),
            401 => {
                *self.token.lock().await = None;
                Err(self.error("change feed: HTTP 401".into(), Some(401), true))
            }
            status => Err(self.error(
                format!("change feed: HTTP {status}"),
                Some(status),
                is_transient_status(status),
            )),
        }
    }

    /// The upstream's request body limit (from its server info; the reference default otherwise).
    pub async fn body_limit(&self) -> u64 {
        *self
            .body_limit
            .get_or_init(|| async {
                let response = self
                    .send_with_retry(
                        Method::Get,
                        "/.well-known/mindoodb-server-info".into(),
                        None,
                        None,
                    )
                    .await;
                match response {
                    Ok(r) if r.status == 200 => {
                        serde_json::from_slice::<ServerInfo>(&r.body.to_bytes())
                            .map(|i| i.max_json_request_body_bytes)
                            .unwrap_or(DEFAULT_BODY_LIMIT)
                    }
                    _ => DEFAULT_BODY_LIMIT,
                }
            })
            .await
    }

    /// An authenticated call: token attached, one re-authentication on 401, transient retries.
    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<TransportResponse, StoreError> {
        let mut reauthenticated = false;
        loop {
            let token = self.token(false).await?;
            let response = self
                .send_with_retry(method, path.clone(), Some(token), body.clone())
                .await?;
            match response.status {
                200..=299 => return Ok(response),
                401 if !reauthenticated => {
                    reauthenticated = true;
                    *self.token.lock().await = None;
                }
                status => return Err(self.status_error(&response, status)),
            }
        }
    }

    fn status_error(&self, response: &TransportResponse, status: u16) -> StoreError {
        let body = response.body.to_bytes();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        self.error(
            format!("HTTP {status}: {message}"),
            Some(status),
            is_transient_status(status),
        )
    }

    /// Sends, retrying transient failures with exponential backoff; returns the last response
    /// (which may be an error status that is not transient).
    async fn send_with_retry(
        &self,
        method: Method,
        path: String,
        bearer: Option<String>,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<TransportResponse, StoreError> {
        let mut delay = self.options.backoff_base;
        let mut attempt = 1;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let request = TransportRequest {
                method,
                path: path.clone(),
                bearer: bearer.clone(),
                body: body.clone(),
                via: super::outgoing_via(&self.options.node_id),
            };
            let outcome = self.transport.send(request).await;
            let wait = match &outcome {
                Ok(r) if is_transient_status(r.status) => {
                    r.retry_after_secs.map(Duration::from_secs).unwrap_or(delay)
                }
                Ok(_) => return Ok(outcome.expect("matched Ok")),
                Err(TransportError::Unreachable { .. }) => delay,
                Err(e @ TransportError::Config(_)) => {
                    return Err(self.error(e.to_string(), None, false))
                }
            };
            if attempt >= self.options.max_attempts {
                return match outcome {
                    Ok(r) => Ok(r),
                    Err(e) => Err(self.error(e.to_string(), None, true)),
                };
            }
            tracing::debug!(upstream = %self.upstream, %path, attempt, "transient failure; retrying");
            tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
            delay = (delay * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    /// The current token, authenticating when there is none or it is about to expire.
    async fn token(&self, force: bool) -> Result<String, StoreError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot
            .as_ref()
            .filter(|t| !force && Instant::now() < t.refresh_at)
        {
            return Ok(t.value.clone());
        }
        let token = self.authenticate().await?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    async fn authenticate(&self) -> Result<Token, StoreError> {
        let challenge_path = format!("/{}/auth/challenge", self.tenant);
        let request = ChallengeRequest {
            username: Some(self.options.username.clone()),
            signing_public_key: None,
        };
        let body = Bytes::from(serde_json::to_vec(&request).expect("serialises"));
        let response = self
            .send_with_retry(
                Method::Post,
                challenge_path,
                None,
                Some(("application/json", body)),
            )
            .await?;
        if response.status != 200 {
            return Err(self.auth_error(&response));
        }
        let challenge: ChallengeResponse = self.decode("challenge", &response.body.to_bytes())?;
        let signature = self
            .options
            .identity
            .signing
            .sign(challenge.challenge.as_bytes());
        let request = AuthenticateRequest {
            challenge: Some(challenge.challenge),
            signature: Some(base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())),
        };
        let body = Bytes::from(serde_json::to_vec(&request).expect("serialises"));
        let response = self
            .send_with_retry(
                Method::Post,
                format!("/{}/auth/authenticate", self.tenant),
                None,
                Some(("application/json", body)),
            )
            .await?;
        if response.status != 200 {
            return Err(self.auth_error(&response));
        }
        let answer: AuthenticateResponse =
            self.decode("authenticate", &response.body.to_bytes())?;
        let value = answer.token.filter(|_| answer.success).ok_or_else(|| {
            self.error(
                "authentication refused".into(),
                Some(response.status),
                false,
            )
        })?;
        let lifetime = token_lifetime(&value).unwrap_or(Duration::from_secs(300));
        // Refresh a little early so that a token never expires in flight.
        let margin = (lifetime / 10).min(Duration::from_secs(60));
        Ok(Token {
            value,
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        })
    }

    fn auth_error(&self, response: &TransportResponse) -> StoreError {
        let mut e = self.status_error(response, response.status);
        if let StoreError::Upstream { message, .. } = &mut e {
            *message = format!(
                "authentication as {} failed ({message}); is this node's identity a trusted server of tenant {} upstream?",
                self.options.username, self.tenant
            );
        }
        e
    }
}

/// 429 and the gateway family are worth retrying; everything else is the upstream's final word.
pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Remaining lifetime of a JWT from its (unverified) `exp` claim: the client only schedules its
/// refresh with it; the upstream is the one that checks the token.
fn token_lifetime(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_i64()?;
    let now = crate::clock::now_ms() / 1000;
    Some(Duration::from_secs(exp.saturating_sub(now).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses() {
        for s in [429, 502, 503, 504] {
            assert!(is_transient_status(s));
        }
        for s in [400, 401, 403, 404, 413, 500, 508] {
            assert!(!is_transient_status(s));
        }
    }

    #[test]
    fn token_lifetime_reads_exp() {
        let exp = crate::clock::now_ms() / 1000 + 120;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{{\"sub\":\"x\",\"exp\":{exp}}}"));
        let token = format!("e30.{payload}.sig");
        let lifetime = token_lifetime(&token).unwrap();
        assert!(lifetime <= Duration::from_secs(120) && lifetime >= Duration::from_secs(118));
        assert_eq!(token_lifetime("garbage"), None);
    }
}
