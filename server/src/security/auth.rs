//! Client authentication for the Flight SQL front door.
//!
//! Contract (what JDBC, ADBC, pyarrow and the Flight SQL CLI do; see
//! `shared/design/flight-sql-clients.md`):
//! * `Handshake` takes `authorization: Basic <base64(user:password)>` (padded or unpadded base64,
//!   with or without request messages) or `authorization: Bearer <token>`, and answers with
//!   `authorization: Bearer <token>` in the response headers;
//! * every other Flight call needs `authorization: Bearer <token>` (Basic credentials are also
//!   accepted on any call); missing or bad credentials answer `Unauthenticated` with a message
//!   that says what to do, never which part of the credentials was wrong;
//! * a token is also accepted as the *password* of a Basic handshake, with any user name, for
//!   tools that cannot send a token (Tableau);
//! * tokens are `payload.signature`, HMAC-SHA256 signed with the `[auth] token_secret` shared by
//!   every coordinator of a cluster, and expire after `token_ttl_secs`; each handshake starts a
//!   new session id, carried in the token, that keys session options;
//! * passwords are stored as PBKDF2-HMAC-SHA256 hashes (`quiver hash-password` makes them) and
//!   checked in constant time; credentials never reach logs or error messages.
//!
//! Without `[auth]` every client is accepted; a Basic handshake then still answers a bearer token
//! (clients that log in to any server keep working), and sessions are keyed on a cookie.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use futures::future::BoxFuture;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use serde::Deserialize;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;

use crate::error::{QuiverError, Result};
use crate::node::net;

/// The `Handshake` method's path: the one call that may log in with a password.
const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";
/// Cookie that keys sessions of clients that do not authenticate.
pub(crate) const SESSION_COOKIE: &str = "arrow_flight_session_id";
/// PBKDF2 rounds of new password hashes (OWASP's figure for PBKDF2-HMAC-SHA256).
pub const DEFAULT_HASH_ITERATIONS: u32 = 600_000;
const TOKEN_VERSION: &str = "quiver1";
/// Successful password checks are remembered this long, so clients that send Basic credentials
/// on every call do not pay a PBKDF2 derivation each time.
const PASSWORD_CACHE_TTL: Duration = Duration::from_secs(60);
const PASSWORD_CACHE_ENTRIES: usize = 1024;

/// The `[auth]` section of the `--config` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Key that signs bearer tokens; give every coordinator of a cluster the same one. Without it
    /// a random key is made at start, and tokens work only on this coordinator until it restarts.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// How long a token is valid.
    #[serde(default = "default_token_ttl_secs")]
    pub token_ttl_secs: u64,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

fn default_token_ttl_secs() -> u64 {
    12 * 3600
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// `$pbkdf2-sha256$i=N$salt$hash`, from `quiver hash-password`.
    pub password_hash: String,
    /// An administrator may see and cancel every user's queries.
    #[serde(default)]
    pub admin: bool,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Who made a request, put into the request's extensions for the front door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The user name; `None` when authentication is off.
    pub user: Option<String>,
    /// Keys session options: the token's session id, or the session cookie.
    pub session: Option<String>,
    /// The user is an administrator (`admin = true` in `[[auth.users]]`).
    pub admin: bool,
}

/// The token a `Handshake` answers with, put into the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken(pub String);

/// A stored password hash.
#[derive(Clone)]
struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl PasswordHash {
    fn parse(text: &str) -> Result<Self> {
        let bad = || {
            QuiverError::InvalidArgument(
                "password_hash must look like $pbkdf2-sha256$i=<rounds>$<salt>$<hash> (made by `quiver hash-password`)".into(),
            )
        };
        let mut parts = text.split('$');
        let (Some(""), Some("pbkdf2-sha256"), Some(rounds), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let iterations = rounds
            .strip_prefix("i=")
            .and_then(|n| n.parse::<u32>().ok())
            .and_then(NonZeroU32::new)
            .ok_or_else(bad)?;
        let salt = STANDARD_NO_PAD.decode(salt).map_err(|_| bad())?;
        let hash = STANDARD_NO_PAD.decode(hash).map_err(|_| bad())?;
        if salt.len() < 8 || hash.len() != digest::SHA256_OUTPUT_LEN {
            return Err(bad());
        }
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    fn verify(&self, password: &str) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// Hashes a password for the `[[auth.users]]` table of the config file.
pub fn hash_password(password: &str, iterations: u32) -> Result<String> {
    let iterations = NonZeroU32::new(iterations)
        .ok_or_else(|| QuiverError::InvalidArgument("iterations must be positive".into()))?;
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| QuiverError::Internal("no system randomness".into()))?;
    let mut hash = [0u8; digest::SHA256_OUTPUT_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    Ok(format!(
        "$pbkdf2-sha256$i={iterations}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(hash)
    ))
}

/// A random id for sessions and tokens.
pub(crate) fn random_id() -> String {
    crate::ids::random_text()
}

/// Checks credentials and issues tokens.
pub(crate) struct Authenticator {
    users: HashMap<String, PasswordHash>,
    admins: std::collections::HashSet<String>,
    key: hmac::Key,
    ttl: Duration,
    /// sha256(user, password) of recent successful password checks, with their expiry.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub(crate) fn new(config: &AuthConfig) -> Result<Self> {
        if config.users.is_empty() {
            return Err(QuiverError::InvalidArgument(
                "[auth] needs at least one [[auth.users]] entry".into(),
            ));
        }
        if config.token_ttl_secs == 0 {
            return Err(QuiverError::InvalidArgument(
                "[auth] token_ttl_secs must be positive".into(),
            ));
        }
        let mut users = HashMap::new();
        for user in &config.users {
            let hash = PasswordHash::parse(&user.password_hash).map_err(|e| {
                QuiverError::InvalidArgument(format!("[[auth.users]] '{}': {e}", user.name))
            })?;
            if users.insert(user.name.clone(), hash).is_some() {
                return Err(QuiverError::InvalidArgument(format!(
                    "[[auth.users]] '{}' is listed twice",
                    user.name
                )));
            }
        }
        let secret = match &config.token_secret {
            Some(secret) if secret.len() < 32 => {
                return Err(QuiverError::InvalidArgument(
                    "[auth] token_secret must be at least 32 characters".into(),
                ));
            }
            Some(secret) => secret.as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "[auth] has no token_secret: tokens are valid only on this coordinator until it restarts"
                );
                let mut secret = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| QuiverError::Internal("no system randomness".into()))?;
                secret
            }
        };
        Ok(Self {
            users,
            admins: config
                .users
                .iter()
                .filter(|u| u.admin)
                .map(|u| u.name.clone())
                .collect(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            ttl: Duration::from_secs(config.token_ttl_secs),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `user` is an administrator.
    pub(crate) fn is_admin(&self, user: &str) -> bool {
        self.admins.contains(user)
    }

    /// A signed token for `user` in a new session.
    pub(crate) fn issue_token(&self, user: &str) -> String {
        let expires = unix_now() + self.ttl.as_secs();
        let payload = format!("{TOKEN_VERSION}\n{expires}\n{}\n{user}", random_id());
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The identity a token stands for, if its signature is ours and it has not expired.
    pub(crate) fn verify_token(&self, token: &str) -> Result<Identity> {
        let invalid = || unauthenticated("the bearer token is invalid: log in again");
        let (payload, tag) = token.trim().split_once('.').ok_or_else(invalid)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        hmac::verify(&self.key, &payload, &tag).map_err(|_| invalid())?;
        let payload = String::from_utf8(payload).map_err(|_| invalid())?;
        let mut fields = payload.splitn(4, '\n');
        let (Some(TOKEN_VERSION), Some(expires), Some(session), Some(user)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(invalid());
        };
        let expires: u64 = expires.parse().map_err(|_| invalid())?;
        if expires <= unix_now() {
            return Err(unauthenticated(
                "the bearer token has expired: log in again",
            ));
        }
        if !self.users.contains_key(user) {
            return Err(unauthenticated("the token's user no longer exists"));
        }
        Ok(Identity {
            user: Some(user.to_string()),
            session: Some(session.to_string()),
            admin: self.is_admin(user),
        })
    }

    /// Checks `user:password`; a valid token is accepted as the password, whatever the user.
    pub(crate) fn verify_password(&self, user: &str, password: &str) -> Result<Identity> {
        let fingerprint = {
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(user.as_bytes());
            ctx.update(&[0]);
            ctx.update(password.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.finish().as_ref());
            out
        };
        let now = Instant::now();
        let cached = self
            .verified
            .lock()
            .map(|m| m.get(&fingerprint).is_some_and(|until| *until > now))
            .unwrap_or(false);
        let ok = cached || self.users.get(user).is_some_and(|h| h.verify(password));
        if ok {
            if !cached && let Ok(mut verified) = self.verified.lock() {
                if verified.len() >= PASSWORD_CACHE_ENTRIES {
                    verified.retain(|_, until| *until > now);
                    if verified.len() >= PASSWORD_CACHE_ENTRIES {
                        verified.clear();
                    }
                }
                verified.insert(fingerprint, now + PASSWORD_CACHE_TTL);
            }
            return Ok(Identity {
                user: Some(user.to_string()),
                session: None,
                admin: self.is_admin(user),
            });
        }
        if let Ok(identity) = self.verify_token(password) {
            return Ok(identity);
        }
        Err(unauthenticated("invalid user name or password"))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unauthenticated(message: &str) -> QuiverError {
    QuiverError::Unauthenticated(message.to_string())
}

/// Credentials found in a request's headers.
enum Credentials {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

fn credentials(headers: &HeaderMap) -> Result<Credentials> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(Credentials::None);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthenticated("the authorization header is not ASCII"))?
        .trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Credentials::Bearer(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // ADBC sends unpadded base64, JDBC and pyarrow padded.
        let decoded = STANDARD
            .decode(rest)
            .or_else(|_| STANDARD_NO_PAD.decode(rest.trim_end_matches('=')))
            .map_err(|_| unauthenticated("the Basic credentials are not valid base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| unauthenticated("the Basic credentials are not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| unauthenticated("Basic credentials must be user:password"))?;
        return Ok(Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    Err(unauthenticated(
        "unsupported authorization scheme: use Basic or Bearer",
    ))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

/// What the layer decided for one request: who it is, and which token to hand back.
struct Decision {
    identity: Identity,
    /// For `Handshake`: the `authorization` header of the response.
    token: Option<String>,
}

fn decide(auth: Option<&Authenticator>, headers: &HeaderMap, handshake: bool) -> Result<Decision> {
    let credentials = credentials(headers)?;
    let Some(auth) = auth else {
        // Authentication is off: everyone is welcome; a handshake still gets a token (which keys
        // its session) because some clients insist on one.
        let session = match &credentials {
            Credentials::Bearer(token) if !token.is_empty() && token.len() <= 64 => {
                Some(token.clone())
            }
            _ => session_cookie(headers),
        };
        let token = handshake.then(|| session.clone().unwrap_or_else(random_id));
        return Ok(Decision {
            identity: Identity {
                user: None,
                session: token.clone().or(session),
                admin: false,
            },
            token,
        });
    };
    match credentials {
        Credentials::None => Err(unauthenticated(
            "authentication required: log in with a Handshake using Basic credentials, then send `authorization: Bearer <token>`",
        )),
        Credentials::Bearer(token) => {
            let identity = auth.verify_token(&token)?;
            Ok(Decision {
                identity,
                token: handshake.then_some(token),
            })
        }
        Credentials::Basic { user, password } => {
            let identity = auth.verify_password(&user, &password)?;
            match (handshake, identity.session.is_some()) {
                // The password was a token: keep it, and its session.
                (true, true) => Ok(Decision {
                    identity,
                    token: Some(password),
                }),
                (true, false) => {
                    let token = auth.issue_token(&user);
                    let identity = auth.verify_token(&token)?;
                    Ok(Decision {
                        identity,
                        token: Some(token),
                    })
                }
                (false, _) => Ok(Decision {
                    identity,
                    token: None,
                }),
            }
        }
    }
}

/// Who sent a request with these headers (Basic or Bearer credentials), checked exactly as the
/// Flight port checks a call; for other ports of the coordinator (the admin HTTP port).
pub(crate) fn authenticate(auth: &Authenticator, headers: &HeaderMap) -> Result<Identity> {
    decide(Some(auth), headers, false).map(|decision| decision.identity)
}

/// Wraps a gRPC service: authenticates every request before it reaches the service, puts the
/// [`Identity`] into the request's extensions, and adds the bearer token to `Handshake` replies.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

impl<S> Authenticated<S> {
    pub(crate) fn new(inner: S, auth: Option<Arc<Authenticator>>) -> Self {
        Self { inner, auth }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let handshake = request.uri().path() == HANDSHAKE_PATH;
        let decision = match decide(self.auth.as_deref(), request.headers(), handshake) {
            Ok(decision) => decision,
            Err(e) => return net::refuse(e.to_status()),
        };
        request.extensions_mut().insert(decision.identity);
        if let Some(token) = &decision.token {
            request.extensions_mut().insert(IssuedToken(token.clone()));
        }
        let response = net::call_readied(&mut self.inner, request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(token) = decision.token
                && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
            {
                response
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, value);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(ttl: u64) -> Authenticator {
        Authenticator::new(&AuthConfig {
            token_secret: Some("s".repeat(32)),
            token_ttl_secs: ttl,
            users: vec![UserConfig {
                name: "alice".into(),
                password_hash: hash_password("wonder land", 1000).unwrap(),
                admin: false,
            }],
        })
        .unwrap()
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    fn code(result: Result<Decision>) -> tonic::Code {
        match result {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.to_status().code(),
        }
    }

    #[test]
    fn basic_handshake_padded_and_unpadded_issues_a_working_token() {
        let auth = authenticator(60);
        let padded = STANDARD.encode("alice:wonder land");
        let unpadded = STANDARD_NO_PAD.encode("alice:wonder land");
        assert_ne!(padded, unpadded, "the test needs a padded encoding");
        for encoded in [padded, unpadded] {
            let decision = decide(Some(&auth), &headers(&format!("Basic {encoded}")), true)
                .expect("valid credentials");
            let token = decision.token.expect("handshake answers a token");
            let identity = auth.verify_token(&token).unwrap();
            assert_eq!(identity.user.as_deref(), Some("alice"));
            assert!(identity.session.is_some());
            // The token works on data calls, and as a Basic password (Tableau).
            let bearer = decide(Some(&auth), &headers(&format!("Bearer {token}")), false).unwrap();
            assert_eq!(bearer.identity, identity);
            let as_password = STANDARD.encode(format!("anyone:{token}"));
            let relogin =
                decide(Some(&auth), &headers(&format!("Basic {as_password}")), true).unwrap();
            assert_eq!(relogin.identity.session, identity.session);
        }
    }

    #[test]
    fn bad_or_missing_credentials_are_unauthenticated() {
        let auth = authenticator(60);
        let wrong = STANDARD.encode("alice:nope");
        let unknown = STANDARD.encode("bob:wonder land");
        for value in [
            format!("Basic {wrong}"),
            format!("Basic {unknown}"),
            "Basic !!!".to_string(),
            "Bearer garbage".to_string(),
            "Bearer a.b".to_string(),
            "Digest x".to_string(),
        ] {
            assert_eq!(
                code(decide(Some(&auth), &headers(&value), false)),
                tonic::Code::Unauthenticated,
                "{value}"
            );
        }
        assert_eq!(
            code(decide(Some(&auth), &HeaderMap::new(), false)),
            tonic::Code::Unauthenticated
        );
        // A token signed with another secret is refused.
        let other = Authenticator::new(&AuthConfig {
            token_secret: Some("t".repeat(32)),
            token_ttl_secs: 60,
            users: vec![UserConfig {
                name: "alice".into(),
                password_hash: hash_password("x", 1000).unwrap(),
                admin: false,
            }],
        })
        .unwrap();
        let foreign = other.issue_token("alice");
        assert!(auth.verify_token(&foreign).is_err());
        // The message never echoes the password.
        let message = decide(Some(&auth), &headers(&format!("Basic {wrong}")), true)
            .err()
            .unwrap()
            .to_string();
        assert!(!message.contains("nope"), "{message}");
    }

    #[test]
    fn tokens_expire_and_are_shared_by_coordinators_with_the_same_secret() {
        let auth = authenticator(60);
        let twin = authenticator(60);
        let token = auth.issue_token("alice");
        assert!(twin.verify_token(&token).is_ok());

        // An expired token, signed correctly.
        let payload = format!("{TOKEN_VERSION}\n{}\nsid\nalice", unix_now() - 1);
        let tag = hmac::sign(&auth.key, payload.as_bytes());
        let expired = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        );
        let err = auth.verify_token(&expired).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn without_auth_everyone_is_accepted_and_sessions_follow_the_cookie() {
        let mut cookies = HeaderMap::new();
        cookies.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=b; arrow_flight_session_id=abc"),
        );
        let decision = decide(None, &cookies, false).unwrap();
        assert_eq!(decision.identity.session.as_deref(), Some("abc"));
        let handshake = decide(None, &headers("Basic dTpw"), true).unwrap();
        assert!(handshake.token.is_some());
    }

    #[test]
    fn config_errors_are_clear() {
        let bad = Authenticator::new(&AuthConfig {
            token_secret: Some("short".into()),
            token_ttl_secs: 60,
            users: vec![UserConfig {
                name: "a".into(),
                password_hash: "plain".into(),
                admin: false,
            }],
        })
        .unwrap_err();
        assert!(bad.to_string().contains("password_hash"), "{bad}");
        let file: crate::config::ServerConfigFile = toml::from_str(
            "[auth]\ntoken_secret = \"0123456789abcdef0123456789abcdef\"\n[[auth.users]]\nname = \"u\"\npassword_hash = \"h\"\n",
        )
        .unwrap();
        assert_eq!(file.auth.unwrap().users[0].name, "u");
    }

    proptest::proptest! {
        // Whatever a client puts in its authorization header is refused or accepted, never a
        // panic, and never anything but Unauthenticated when refused.
        #[test]
        fn arbitrary_authorization_headers(value in "[ -~]{0,200}") {
            let auth = authenticator(60);
            if let Ok(header) = HeaderValue::from_str(&value) {
                let mut headers = HeaderMap::new();
                headers.insert(http::header::AUTHORIZATION, header);
                for handshake in [false, true] {
                    if let Err(e) = decide(Some(&auth), &headers, handshake) {
                        proptest::prop_assert_eq!(e.to_status().code(), tonic::Code::Unauthenticated);
                    }
                }
            }
        }
    }
}
