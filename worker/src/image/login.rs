//! `weft login`'s check: do these credentials open this registry? As
//! Docker's login does it:
//!
//! ```text
//!   GET /v2/ with Basic auth ─► 200: yes
//!            └─► 401 + WWW-Authenticate: Basic … ─► no ("unauthorized")
//!            └─► 401 + WWW-Authenticate: Bearer realm=R,service=S
//!                  ─► GET R?service=S&account=USER with Basic auth
//!                       ─► 200: yes   401/403: no ("unauthorized")
//! ```
//!
//! The challenge parsing is pure ([`challenge`]) with unit tests. The
//! credentials go only to the registry asked and to the token realm it
//! names, which must be an http(s) URL.

use std::time::Duration;

use super::credential::Credential;
use super::pull::{PullError, plain_http};

/// How long each request of the check may take.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Longest `WWW-Authenticate` header read.
const MAX_CHALLENGE: usize = 4096;

/// What a registry's `WWW-Authenticate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic auth on every request.
    Basic,
    /// A token from `realm`, for `service` (and `scope`, when given).
    Bearer {
        /// The token server's URL.
        realm: String,
        /// The registry's name at the token server.
        service: String,
        /// The access asked for, if the registry said.
        scope: String,
    },
    /// A scheme weft does not speak, or no header at all.
    Unknown,
}

/// Reads a `WWW-Authenticate` header value. Pure.
pub fn challenge(header: &str) -> Challenge {
    if header.len() > MAX_CHALLENGE {
        return Challenge::Unknown;
    }
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Unknown;
    }
    let (mut realm, mut service, mut scope) = (String::new(), String::new(), String::new());
    for (key, value) in params_of(params) {
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = value,
            "service" => service = value,
            "scope" => scope = value,
            _ => {}
        }
    }
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return Challenge::Unknown;
    }
    Challenge::Bearer {
        realm,
        service,
        scope,
    }
}

/// `key="value",key=value,…` as pairs (quoted values may hold commas).
fn params_of(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, n)) => (v.to_owned(), n),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v.trim().to_owned(), n),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.push((key, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Checks `credential` against `registry` (`host[:port]`) as Docker's
/// login does. Plain HTTP to loopback registries, to those in `insecure`,
/// or when `force_http`; HTTPS otherwise.
pub async fn check(
    registry: &str,
    credential: &Credential,
    insecure: &[String],
    force_http: bool,
) -> Result<(), PullError> {
    super::pull::check_registry(registry)?;
    let scheme = if force_http || plain_http(registry, insecure) {
        "http"
    } else {
        "https"
    };
    // reqwest is built without a crypto provider: weft's is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let unreachable = |detail: String| PullError::Unreachable {
        registry: registry.to_owned(),
        detail,
        hint: "",
    };
    let client = reqwest::Client::builder()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| unreachable(format!("cannot set up an HTTP client: {e}")))?;
    let unauthorized = || PullError::LoginRefused {
        registry: registry.to_owned(),
    };
    let answer = client
        .get(format!("{scheme}://{registry}/v2/"))
        .basic_auth(credential.username(), Some(credential.password()))
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    match answer.status().as_u16() {
        200..=299 => return Ok(()),
        401 => {}
        code => {
            return Err(PullError::Registry {
                registry: registry.to_owned(),
                detail: format!("GET /v2/ answered HTTP {code}"),
            });
        }
    }
    let header = answer
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let Challenge::Bearer { realm, service, .. } = challenge(header) else {
        return Err(unauthorized());
    };
    let token = client
        .get(&realm)
        .query(&[
            ("service", service.as_str()),
            ("account", credential.username()),
        ])
        .basic_auth(credential.username(), Some(credential.password()))
        .send()
        .await
        .map_err(|e| unreachable(format!("token server {realm}: {e}")))?;
    match token.status().as_u16() {
        200..=299 => Ok(()),
        401 | 403 => Err(unauthorized()),
        code => Err(PullError::Registry {
            registry: registry.to_owned(),
            detail: format!("its token server {realm} answered HTTP {code}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read() {
        assert_eq!(
            challenge(r#"Basic realm="Registry Realm""#),
            Challenge::Basic
        );
        assert_eq!(
            challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#
            ),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: "registry.docker.io".into(),
                scope: "repository:library/busybox:pull,push".into(),
            }
        );
        assert_eq!(
            challenge("bearer realm=http://127.0.0.1:5001/auth, service=local"),
            Challenge::Bearer {
                realm: "http://127.0.0.1:5001/auth".into(),
                service: "local".into(),
                scope: String::new(),
            }
        );
        // A realm that is not http(s) is not followed.
        assert_eq!(
            challenge(r#"Bearer realm="file:///etc/passwd",service="x""#),
            Challenge::Unknown
        );
        assert_eq!(challenge("Negotiate"), Challenge::Unknown);
        assert_eq!(challenge(""), Challenge::Unknown);
        let huge = format!("Bearer realm=\"https://x/{}\"", "a".repeat(MAX_CHALLENGE));
        assert_eq!(challenge(&huge), Challenge::Unknown);
    }
}
