//! Authentication of the internal plane: coordinator ↔ executor and executor ↔ executor.
//!
//! A plan fragment can read any file an executor can, so an executor must only run what a member
//! of its cluster sent. Every node of a cluster shares a secret (`--cluster-secret-file`, at least
//! 32 bytes; `quiver serve` makes one per process). Every internal gRPC request carries
//! `x-quiver-cluster-auth: <unix seconds>.<hex HMAC-SHA256(secret, "quiver-cluster " + seconds)>`,
//! and every internal service (the worker service, executor status, task progress, and the
//! coordinator's membership service) refuses a request whose signature is missing, wrong, or more
//! than five minutes off with `Unauthenticated`. Without a secret the internal plane is open,
//! which is only acceptable on loopback or a closed network.
//!
//! The signature proves membership, not secrecy: use TLS or a private network against eavesdroppers.

use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;

use crate::error::{QuiverError, Result};
use crate::node::net;

/// The header that carries the signature.
pub(crate) const HEADER: &str = "x-quiver-cluster-auth";
/// How far a signature's clock may be from ours.
const MAX_SKEW_SECS: u64 = 300;
const MIN_SECRET_BYTES: usize = 32;

/// The cluster secret, or none (an open internal plane). Cheap to clone.
#[derive(Clone, Default)]
pub struct ClusterAuth(Option<Arc<hmac::Key>>);

impl std::fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClusterAuth")
            .field(&self.0.as_ref().map(|_| "secret"))
            .finish()
    }
}

impl ClusterAuth {
    /// No secret: requests are neither signed nor checked.
    pub fn open() -> Self {
        Self(None)
    }

    pub fn from_secret(secret: &[u8]) -> Result<Self> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(QuiverError::InvalidArgument(format!(
                "the cluster secret must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        Ok(Self(Some(Arc::new(hmac::Key::new(
            hmac::HMAC_SHA256,
            secret,
        )))))
    }

    /// Reads the secret from a file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read(path)
            .map_err(|e| QuiverError::io(format!("reading {}", path.display()), e))?;
        let trimmed = String::from_utf8_lossy(&text).trim().as_bytes().to_vec();
        Self::from_secret(&trimmed)
    }

    /// A fresh random secret, for a cluster inside one process (`quiver serve`).
    pub fn random() -> Result<Self> {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| QuiverError::Internal("no system randomness".into()))?;
        Self::from_secret(&secret)
    }

    pub fn is_open(&self) -> bool {
        self.0.is_none()
    }

    fn signature(key: &hmac::Key, seconds: u64) -> String {
        let tag = hmac::sign(key, format!("quiver-cluster {seconds}").as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Adds the signature to an outgoing request's headers.
    pub fn sign(&self, headers: &mut HeaderMap) {
        let Some(key) = &self.0 else {
            return;
        };
        let seconds = unix_now();
        if let Ok(value) =
            HeaderValue::from_str(&format!("{seconds}.{}", Self::signature(key, seconds)))
        {
            headers.insert(HEADER, value);
        }
    }

    /// Checks an incoming request's signature.
    pub fn check(&self, headers: &HeaderMap) -> Result<()> {
        let Some(key) = &self.0 else {
            return Ok(());
        };
        let refused = || {
            QuiverError::Unauthenticated(
                "internal request without a valid cluster signature: is this node started with the cluster's --cluster-secret-file?".into(),
            )
        };
        let value = headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(refused)?;
        let (seconds, tag) = value.split_once('.').ok_or_else(refused)?;
        let seconds: u64 = seconds.parse().map_err(|_| refused())?;
        if unix_now().abs_diff(seconds) > MAX_SKEW_SECS {
            return Err(QuiverError::Unauthenticated(
                "the cluster signature is too old (or the clocks of the nodes disagree)".into(),
            ));
        }
        let tag = (0..tag.len())
            .step_by(2)
            .map(|i| {
                tag.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(refused)?;
        hmac::verify(key, format!("quiver-cluster {seconds}").as_bytes(), &tag)
            .map_err(|_| refused())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Client side: signs every request sent through `inner` (a channel).
#[derive(Debug, Clone)]
pub struct Signed<S> {
    inner: S,
    auth: ClusterAuth,
}

impl<S> Signed<S> {
    pub fn new(inner: S, auth: ClusterAuth) -> Self {
        Self { inner, auth }
    }
}

impl<S, B> Service<http::Request<B>> for Signed<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        self.auth.sign(request.headers_mut());
        self.inner.call(request)
    }
}

/// Server side: refuses requests without a valid signature before they reach `inner`.
#[derive(Debug, Clone)]
pub(crate) struct Verified<S> {
    inner: S,
    auth: ClusterAuth,
}

impl<S> Verified<S> {
    pub(crate) fn new(inner: S, auth: ClusterAuth) -> Self {
        Self { inner, auth }
    }
}

impl<S: NamedService> NamedService for Verified<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Verified<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Err(e) = self.auth.check(request.headers()) {
            return net::refuse(e.to_status());
        }
        Box::pin(net::call_readied(&mut self.inner, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_same_secret() {
        let auth = ClusterAuth::from_secret(&[7u8; 32]).unwrap();
        let other = ClusterAuth::from_secret(&[8u8; 32]).unwrap();
        let mut headers = HeaderMap::new();
        assert!(auth.check(&headers).is_err());
        auth.sign(&mut headers);
        auth.check(&headers).unwrap();
        let err = other.check(&headers).unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::Unauthenticated);
        ClusterAuth::open().check(&HeaderMap::new()).unwrap();

        let mut stale = HeaderMap::new();
        let old = unix_now() - 2 * MAX_SKEW_SECS;
        let key = auth.0.clone().unwrap();
        stale.insert(
            HEADER,
            HeaderValue::from_str(&format!("{old}.{}", ClusterAuth::signature(&key, old))).unwrap(),
        );
        assert!(auth.check(&stale).is_err());
        for garbage in ["", "x", "1.zz", "1.abc"] {
            let mut h = HeaderMap::new();
            h.insert(HEADER, HeaderValue::from_static(garbage));
            assert!(auth.check(&h).is_err(), "{garbage}");
        }
        assert!(ClusterAuth::from_secret(b"short").is_err());
    }
}
