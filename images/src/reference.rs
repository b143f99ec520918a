//! Image references normalized as kubelet and containerd do: `busybox` → `docker.io/library/busybox:latest`,
//! `registry.k8s.io/pause@sha256:…` kept by digest.

use oci_client::Reference;

use crate::error::{ImageError, Result};

/// A normalized reference: the full name and, when it had them, its tag and digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The upstream registry host: `docker.io`, `registry.k8s.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let invalid = |message: String| ImageError::InvalidReference {
            reference: s.to_string(),
            message,
        };
        if s.is_empty() {
            return Err(invalid("empty".into()));
        }
        let r: Reference = s.parse().map_err(|e: oci_client::ParseError| invalid(e.to_string()))?;
        if let Some(d) = r.digest()
            && !d.starts_with("sha256:")
        {
            return Err(invalid(format!("unsupported digest algorithm in {d}")));
        }
        // A reference by digest alone keeps no tag (oci-client adds `latest` only when there is neither).
        let tag = match (r.tag(), r.digest()) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".into()),
        };
        Ok(ImageRef {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag,
            digest: r.digest().map(str::to_string),
        })
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `docker.io/library/busybox:latest`, when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `docker.io/library/busybox@sha256:…` for the given manifest digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The full normalized form: `name:tag`, `name@digest` or `name:tag@digest`.
    pub fn full(&self) -> String {
        let mut s = self.name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The oci-client reference for fetching from `host` (the upstream itself or a mirror of it).
    pub(crate) fn for_host(&self, host: &str, by_digest: Option<&str>) -> Reference {
        let mut r = match (by_digest.or(self.digest.as_deref()), &self.tag) {
            (Some(d), _) => Reference::with_digest(self.registry.clone(), self.repository.clone(), d.to_string()),
            (None, Some(t)) => Reference::with_tag(self.registry.clone(), self.repository.clone(), t.clone()),
            (None, None) => Reference::with_tag(self.registry.clone(), self.repository.clone(), "latest".into()),
        };
        if host != self.registry {
            r.set_mirror_registry(host.to_string());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_kubelet() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("127.0.0.1:5000/berth-test/a:1", "127.0.0.1:5000/berth-test/a:1"),
            (
                "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
                "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).unwrap().full(), want, "{input}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.full(), format!("docker.io/library/busybox@{d}"));
        assert_eq!(r.tagged(), None);
        let r = ImageRef::parse(&format!("busybox:1@{d}")).unwrap();
        assert_eq!(r.full(), format!("docker.io/library/busybox:1@{d}"));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "Busybox", "a b", "busybox@sha256:short"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mirrors_keep_the_repository() {
        let r = ImageRef::parse("busybox").unwrap();
        let m = r.for_host("127.0.0.1:5000", None);
        assert_eq!(m.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(m.repository(), "library/busybox");
    }
}
