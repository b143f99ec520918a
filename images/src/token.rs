//! CRI's `identity_token`: an OAuth2 refresh token (what `docker login` stores for registries with an
//! identity provider). oci-client only sends a bearer token it is given, so the refresh token is traded
//! here for an access token at the token service the registry names in its challenge, as containerd's
//! docker authorizer does (POST `grant_type=refresh_token`).

use std::collections::HashMap;

use serde::Deserialize;

use crate::hosts::RegistryHost;

#[derive(Deserialize)]
struct TokenReply {
    access_token: Option<String>,
    token: Option<String>,
}

/// The parameters of a `Bearer realm="…",service="…"` challenge; `None` for another scheme.
pub(crate) fn bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = tail.trim_start_matches([',', ' ']);
    }
    Some(params)
}

fn http_client(host: &RegistryHost) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .danger_accept_invalid_certs(host.skip_verify)
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60));
    for path in &host.ca {
        let pem = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| e.to_string())
}

/// Trades `refresh_token` for an access token to pull `repository` from `host`.
pub(crate) async fn exchange(host: &RegistryHost, repository: &str, refresh_token: &str) -> Result<String, String> {
    let client = http_client(host)?;
    let scheme = if host.plain_http { "http" } else { "https" };
    let ping = client
        .get(format!("{scheme}://{}/v2/", host.host))
        .send()
        .await
        .map_err(|e| format!("ping: {e}"))?;
    let challenge = ping
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let params = bearer_challenge(challenge).ok_or_else(|| {
        format!("the registry asks for no bearer token ({challenge:?}): an identity token cannot be used")
    })?;
    let realm = params.get("realm").ok_or("the bearer challenge names no realm")?;
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", "berth"),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = params.get("service") {
        form.push(("service", service));
    }
    let reply = client
        .post(realm)
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("token service {realm}: {e}"))?;
    if !reply.status().is_success() {
        return Err(format!("token service {realm} answered {}", reply.status()));
    }
    let t: TokenReply = reply.json().await.map_err(|e| format!("token service {realm}: {e}"))?;
    t.access_token
        .or(t.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("token service {realm} returned no token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let p = bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a:pull");
        assert!(bearer_challenge(r#"Basic realm="x""#).is_none());
        assert_eq!(bearer_challenge("bearer realm=plain").unwrap()["realm"], "plain");
    }
}
