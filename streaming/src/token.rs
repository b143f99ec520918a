//! Single-use tokens for streaming URLs: 32 random bytes, URL-safe base64, valid for a short time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::request::{AttachRequest, ExecRequest, PortForwardRequest, RequestError};

/// A request waiting for its client to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

pub(crate) struct TokenCache {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        TokenCache {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `request` under a fresh token.
    pub(crate) fn insert(&self, request: Pending) -> Result<String, RequestError> {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= self.max {
            return Err(RequestError::TooManyPending(self.max));
        }
        entries.insert(token.clone(), (now + self.ttl, request));
        Ok(token)
    }

    /// Removes and returns the request of `token` when it exists and has not expired.
    pub(crate) fn take(&self, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, request) = entries.remove(token)?;
        (expires > Instant::now()).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![],
        })
    }

    #[test]
    fn tokens_are_single_use_unguessable_and_url_safe() {
        let cache = TokenCache::new(Duration::from_secs(60), 10);
        let a = cache.insert(pf()).unwrap();
        let b = cache.insert(pf()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(cache.take(&a), Some(pf()));
        assert_eq!(cache.take(&a), None);
        assert_eq!(cache.take("nope"), None);
    }

    #[test]
    fn tokens_expire() {
        let cache = TokenCache::new(Duration::from_millis(1), 10);
        let t = cache.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.take(&t), None);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let cache = TokenCache::new(Duration::from_secs(60), 2);
        cache.insert(pf()).unwrap();
        cache.insert(pf()).unwrap();
        assert_eq!(cache.insert(pf()), Err(RequestError::TooManyPending(2)));
    }
}
