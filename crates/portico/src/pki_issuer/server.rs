//! The issuer's HTTPS endpoint. `POST /v1/raft-certificate` with a bearer token and a PEM
//! CSR answers the caller's Raft certificate, or a JSON `{"reason": ...}` naming the rule
//! that refused it; `GET /metrics` counts both. HTTP/1.1 over TLS 1.3; each request head
//! must arrive within [`HEADER_READ_TIMEOUT`], a body within [`BODY_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] connections at once (as the admin listener).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::csr::{self, CsrError};
use super::facts::{self, AskError};
use super::policy::{Policy, Refusal};
use crate::pki::{self, Ca};

pub const PATH: &str = "/v1/raft-certificate";
/// The largest CSR body accepted (a P-384 or RSA-4096 CSR is well under it).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Past this, an oversized body is no longer read (to answer 413 the client can see).
const MAX_DISCARD_BYTES: usize = 1024 * 1024;
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONNECTIONS: usize = 64;
/// How far notBefore is put in the past, for replicas whose clocks run behind ours.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Issued and refused requests, by outcome and rule.
pub type Decisions = Family<Vec<(&'static str, &'static str)>, Counter>;

/// Everything a request is judged and signed with.
pub struct Issuer {
    pub ca: Ca,
    pub client: kube::Client,
    pub policy: Policy,
    pub peer_service: String,
    pub cluster_domain: String,
    pub lifetime: Duration,
    pub registry: Registry,
    pub decisions: Decisions,
}

/// Why a request got no certificate: its status, rule and the reason the caller reads.
struct Denial {
    status: StatusCode,
    rule: &'static str,
    reason: String,
    /// The bound Pod, once known (for the log).
    pod: Option<String>,
}

impl Denial {
    fn new(status: StatusCode, rule: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            rule,
            reason: reason.into(),
            pod: None,
        }
    }
}

impl From<Refusal> for Denial {
    fn from(refusal: Refusal) -> Self {
        Self::new(refusal.status(), refusal.rule(), refusal.to_string())
    }
}

impl From<CsrError> for Denial {
    fn from(error: CsrError) -> Self {
        let rule = match error {
            CsrError::NotPem => "csr_not_pem",
            CsrError::Unparsable => "csr_unparsable",
            CsrError::BadSignature => "csr_bad_signature",
            CsrError::UnsupportedKey => "csr_unsupported_key",
        };
        Self::new(StatusCode::BAD_REQUEST, rule, error.to_string())
    }
}

impl From<AskError> for Denial {
    fn from(error: AskError) -> Self {
        // The details go to the log only; the caller learns to retry.
        tracing::warn!(error = %error, "the API server could not be asked");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_unavailable",
            "the API server could not be asked; nothing is signed until it can",
        )
    }
}

fn json(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "reason": reason }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body + "\n")))
        .expect("static response parts")
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(request: &Request<Incoming>) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn is_pkcs10(request: &Request<Incoming>) -> bool {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let media = value.to_str().unwrap_or_default();
    let media = media.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/pkcs10")
}

/// The body, at most [`MAX_BODY_BYTES`]: a larger one is read on (up to
/// [`MAX_DISCARD_BYTES`], so the client is still reading when it gets 413) and refused.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Denial> {
    let too_large = || {
        Denial::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_DISCARD_BYTES) {
        return Err(too_large());
    }
    let mut body = request.into_body();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(Denial::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {BODY_TIMEOUT:?}"),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(Denial::new(
                    StatusCode::BAD_REQUEST,
                    "body_unreadable",
                    "the body could not be read",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY_BYTES {
                kept.extend_from_slice(&data);
            } else if seen > MAX_DISCARD_BYTES {
                break;
            }
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

impl Issuer {
    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::POST, PATH) => self.answer_certificate(request, peer).await,
            (&Method::GET, "/metrics") => self.metrics(),
            (_, PATH) => json(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            (_, "/metrics") => json(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
            _ => json(
                StatusCode::NOT_FOUND,
                "not found: POST /v1/raft-certificate, GET /metrics",
            ),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        crate::metrics::openmetrics(&self.registry)
            .unwrap_or_else(|_| json(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"))
    }

    async fn answer_certificate(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        match self.certificate(request).await {
            Ok((pod, issued)) => {
                self.decisions
                    .get_or_create(&vec![("outcome", "issued"), ("rule", "")])
                    .inc();
                tracing::info!(
                    pod = %pod,
                    namespace = %self.policy.namespace,
                    serial = %issued.serial,
                    not_after = %issued.not_after,
                    %peer,
                    "issued a Raft certificate"
                );
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/x-pem-file")
                    .body(Full::new(Bytes::from(issued.cert_pem)))
                    .expect("static response parts")
            }
            Err(denial) => {
                self.decisions
                    .get_or_create(&vec![("outcome", "refused"), ("rule", denial.rule)])
                    .inc();
                tracing::warn!(
                    rule = denial.rule,
                    reason = %denial.reason,
                    pod = denial.pod.as_deref().unwrap_or(""),
                    namespace = %self.policy.namespace,
                    %peer,
                    "refused a Raft certificate"
                );
                json(denial.status, &denial.reason)
            }
        }
    }

    /// Every check, in order (the cheap ones first, so garbage costs the API server nothing),
    /// then the signature. Returns the Pod's name and its certificate.
    async fn certificate(
        &self,
        request: Request<Incoming>,
    ) -> Result<(String, pki::Issued), Denial> {
        let token = bearer(&request).ok_or(Refusal::MissingToken)?.to_owned();
        if !is_pkcs10(&request) {
            return Err(Denial::new(
                StatusCode::BAD_REQUEST,
                "wrong_content_type",
                "the body must be a PEM CSR sent as Content-Type: application/pkcs10",
            ));
        }
        let body = read_body(request).await?;
        let public_key = csr::verified_public_key(&body)?;

        let review = facts::review_token(&self.client, &token, &self.policy.audience).await?;
        let bound = self.policy.token(review.as_ref()).inspect_err(|_| {
            // The API server's own words (which never quote the token) help an operator; the
            // caller gets only the rule.
            if let Some(error) = review.as_ref().and_then(|s| s.error.as_deref()) {
                tracing::warn!(error, "the TokenReview's error");
            }
        })?;
        let with_pod = |denial: Denial| Denial {
            pod: Some(bound.name.clone()),
            ..denial
        };
        let (pod, statefulset) = facts::pod_and_statefulset(
            &self.client,
            &self.policy.namespace,
            &bound.name,
            &self.policy.statefulset,
        )
        .await
        .map_err(|e| with_pod(e.into()))?;
        self.policy
            .pod(&bound, pod.as_ref(), statefulset.as_ref())
            .map_err(|e| with_pod(e.into()))?;

        let names = pki::replica_names(
            &bound.name,
            &self.policy.namespace,
            Some(&self.peer_service),
            &self.cluster_domain,
        );
        let issued = self
            .ca
            .sign_public_key(&bound.name, &names, &public_key, self.lifetime, CLOCK_SKEW)
            .map_err(|e| {
                tracing::error!(error = %e, pod = %bound.name, "signing failed");
                with_pod(Denial::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "signing_failed",
                    "signing failed",
                ))
            })?;
        Ok((bound.name, issued))
    }
}

/// Serves `issuer` on `listener` with `tls` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    issuer: Arc<Issuer>,
    stop: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    while let Some((stream, peer)) = crate::accept::next(&listener, &stop, "pki").await {
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached; closed");
            continue;
        };
        let (acceptor, issuer, http) = (acceptor.clone(), issuer.clone(), http.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let issuer = issuer.clone();
                async move { Ok::<_, Infallible>(issuer.handle(request, peer).await) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
