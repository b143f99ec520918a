//! Talking to the registry hosts of one reference through oci-client: each host (mirror or upstream) in
//! order, with its own TLS and plain-http settings, falling back to the next on failure.

use std::sync::Arc;

use futures::StreamExt;
use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

use crate::content::{ContentStore, IngestWatch};
use crate::error::{Attempts, HostAttempt, ImageError, Result};
use crate::hosts::RegistryHost;
use crate::manifest::{ACCEPTED, Descriptor};
use crate::reference::ImageRef;

/// Credentials for a pull, as CRI's `AuthConfig` carries them.
#[derive(Clone, Default)]
pub struct PullAuth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// A bearer token for the registry itself.
    pub registry_token: String,
    /// An OAuth2 refresh token, traded for an access token at the registry's token service.
    pub identity_token: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("PullAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl PullAuth {
    pub fn registry_auth(&self) -> RegistryAuth {
        use base64::Engine as _;
        if !self.registry_token.is_empty() {
            return RegistryAuth::Bearer(self.registry_token.clone());
        }
        if !self.username.is_empty() {
            return RegistryAuth::Basic(self.username.clone(), self.password.clone());
        }
        if !self.auth.is_empty()
            && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(self.auth.trim())
            && let Ok(s) = String::from_utf8(raw)
            && let Some((u, p)) = s.split_once(':')
        {
            return RegistryAuth::Basic(u.to_string(), p.to_string());
        }
        // An identity token (alone) is traded per host by `Remote::new`.
        RegistryAuth::Anonymous
    }
}

/// The hosts of one reference, each with its client.
#[derive(Clone)]
pub(crate) struct Remote {
    reference: ImageRef,
    /// Each host with its client and the credentials it gets.
    hosts: Vec<(RegistryHost, Client, RegistryAuth)>,
}

fn client_for(host: &RegistryHost) -> Result<Client> {
    let mut certs = Vec::new();
    for path in &host.ca {
        let data = std::fs::read(path).map_err(|source| ImageError::Content {
            path: path.clone(),
            source,
        })?;
        certs.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    let config = ClientConfig {
        protocol: if host.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: host.skip_verify,
        extra_root_certificates: certs,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    Ok(Client::new(config))
}

fn sha256(data: &[u8]) -> String {
    berth_core::model::sha256_digest(data)
}

impl Remote {
    /// The clients for `hosts`. An identity token given alone is traded for an access token at each
    /// host's token service; a host that cannot trade it is asked anonymously (and its refusal reported).
    pub async fn new(reference: &ImageRef, hosts: Vec<RegistryHost>, auth: &PullAuth) -> Result<Remote> {
        let given = auth.registry_auth();
        let mut out = Vec::with_capacity(hosts.len());
        for h in hosts {
            let client = client_for(&h)?;
            let mut host_auth = given.clone();
            if matches!(given, RegistryAuth::Anonymous) && !auth.identity_token.is_empty() {
                match crate::token::exchange(&h, &reference.repository, &auth.identity_token).await {
                    Ok(token) => host_auth = RegistryAuth::Bearer(token),
                    Err(error) => tracing::warn!(host = %h.host, %error, "cannot use the identity token"),
                }
            }
            out.push((h, client, host_auth));
        }
        Ok(Remote {
            reference: reference.clone(),
            hosts: out,
        })
    }

    /// The manifest (or index) the reference names, its digest checked: `(bytes, digest)`.
    pub async fn resolve(&self) -> Result<(Vec<u8>, String)> {
        let by_digest = self.reference.digest.clone();
        let mut attempts = Vec::new();
        for (host, client, auth) in &self.hosts {
            let usable = if by_digest.is_some() { host.pull } else { host.resolve };
            if !usable {
                continue;
            }
            let r = self.reference.for_host(&host.host, None);
            match client.pull_manifest_raw(&r, auth, ACCEPTED).await {
                Ok((bytes, _)) => {
                    let digest = sha256(&bytes);
                    if let Some(want) = &by_digest
                        && *want != digest
                    {
                        return Err(ImageError::Digest {
                            expected: want.clone(),
                            actual: digest,
                        });
                    }
                    tracing::debug!(host = %host.host, reference = %self.reference.full(), %digest, "resolved");
                    return Ok((bytes.to_vec(), digest));
                }
                Err(error) => attempts.push(HostAttempt {
                    host: host.host.clone(),
                    error,
                }),
            }
        }
        Err(ImageError::Resolve {
            reference: self.reference.full(),
            attempts: Attempts(attempts),
        })
    }

    /// A manifest by digest, checked.
    pub async fn manifest(&self, digest: &str) -> Result<Vec<u8>> {
        let mut attempts = Vec::new();
        for (host, client, auth) in self.hosts.iter().filter(|(h, _, _)| h.pull) {
            let r = self.reference.for_host(&host.host, Some(digest));
            match client.pull_manifest_raw(&r, auth, ACCEPTED).await {
                Ok((bytes, _)) => {
                    let actual = sha256(&bytes);
                    if actual != digest {
                        return Err(ImageError::Digest {
                            expected: digest.to_string(),
                            actual,
                        });
                    }
                    return Ok(bytes.to_vec());
                }
                Err(error) => attempts.push(HostAttempt {
                    host: host.host.clone(),
                    error,
                }),
            }
        }
        Err(ImageError::Fetch {
            reference: self.reference.full(),
            digest: digest.to_string(),
            attempts: Attempts(attempts),
        })
    }

    /// Streams a blob into the content store, size and digest checked as it comes. A blob whose size or
    /// digest is wrong is an error at once (no other host is asked); a host that fails otherwise is
    /// followed by the next.
    pub async fn fetch_blob(
        &self,
        content: &ContentStore,
        desc: &Descriptor,
        watch: Option<Arc<IngestWatch>>,
    ) -> Result<()> {
        let oci = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size as i64,
            ..Default::default()
        };
        let mut attempts = Vec::new();
        for (host, client, _) in self.hosts.iter().filter(|(h, _, _)| h.pull) {
            let r = self.reference.for_host(&host.host, Some(&desc.digest));
            let mut stream = match client.pull_blob_stream(&r, &oci).await {
                Ok(s) => s,
                Err(error) => {
                    attempts.push(HostAttempt {
                        host: host.host.clone(),
                        error,
                    });
                    continue;
                }
            };
            let mut w = content
                .watched_writer(&desc.digest, Some(desc.size), watch.clone())
                .await?;
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => w.write(&bytes).await?,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return w.commit().await,
                Some(e) => {
                    // A short or corrupt body says more than the transport error does.
                    if w.written() != desc.size {
                        return Err(ImageError::Size {
                            digest: desc.digest.clone(),
                            expected: desc.size,
                            actual: w.written(),
                            truncated: w.written() < desc.size,
                        });
                    }
                    // The whole body came but the stream failed its own digest check: say which.
                    tracing::debug!(host = %host.host, digest = %desc.digest, error = %e, "blob stream failed");
                    return w.commit().await;
                }
            }
        }
        Err(ImageError::Fetch {
            reference: self.reference.full(),
            digest: desc.digest.clone(),
            attempts: Attempts(attempts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_auth_config_maps_to_registry_auth() {
        let token = PullAuth {
            registry_token: "t".into(),
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert!(matches!(token.registry_auth(), RegistryAuth::Bearer(t) if t == "t"));
        let basic = PullAuth {
            username: "u".into(),
            password: "p".into(),
            auth: "eDp5".into(), // x:y, ignored: username and password come first
            ..Default::default()
        };
        assert!(matches!(basic.registry_auth(), RegistryAuth::Basic(u, p) if u == "u" && p == "p"));
        let encoded = PullAuth {
            auth: "eDp5".into(),
            ..Default::default()
        };
        assert!(matches!(encoded.registry_auth(), RegistryAuth::Basic(u, p) if u == "x" && p == "y"));
        // An identity (OAuth refresh) token is traded per host by `Remote::new`, not mapped here.
        let identity = PullAuth {
            identity_token: "refresh".into(),
            ..Default::default()
        };
        assert!(matches!(identity.registry_auth(), RegistryAuth::Anonymous));
        assert!(matches!(PullAuth::default().registry_auth(), RegistryAuth::Anonymous));
        // Debug never prints a secret.
        let shown = format!("{token:?}");
        assert!(!shown.contains("\"p\"") && !shown.contains("\"t\""), "{shown}");
    }
}
