//! Single-use tokens for streaming URLs: each names one cached Exec, Attach
//! or PortForward request, expires a minute after issue (as kubelet's and
//! containerd's request cache), and is consumed by its first use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Most requests waiting for their stream at once (containerd's limit).
pub const MAX_IN_FLIGHT: usize = 1000;

/// Why no URL could be issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Too many URLs issued and not yet used.
    #[error("too many streaming requests in flight ({MAX_IN_FLIGHT})")]
    Full,
    /// No randomness for the token.
    #[error("reading /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
}

/// Issued tokens and the requests they stand for.
pub struct TokenCache<T> {
    entries: Mutex<HashMap<String, (Instant, T)>>,
    ttl: Duration,
}

impl<T> TokenCache<T> {
    /// An empty cache whose tokens live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Keeps `request` and returns its new token (256 random bits, hex).
    pub fn insert(&self, request: T) -> Result<String, TokenError> {
        let token = crate::ids::new_id().map_err(TokenError::Random)?;
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        m.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if m.len() >= MAX_IN_FLIGHT {
            return Err(TokenError::Full);
        }
        m.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// The request of `token`, once: a used, expired or unknown token gives
    /// None.
    pub fn consume(&self, token: &str) -> Option<T> {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, request) = m.remove(token)?;
        (at.elapsed() < self.ttl).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let c = TokenCache::new(TOKEN_TTL);
        let t = c.insert(7).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(c.consume(&t), Some(7));
        assert_eq!(c.consume(&t), None);
        assert_eq!(c.consume("forged"), None);
        assert_ne!(c.insert(1).unwrap(), c.insert(1).unwrap());
    }

    #[test]
    fn a_token_expires() {
        let c = TokenCache::new(Duration::from_millis(20));
        let t = c.insert("x").unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.consume(&t), None);
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_expired_tokens() {
        let c = TokenCache::new(Duration::from_millis(50));
        for _ in 0..MAX_IN_FLIGHT {
            c.insert(()).unwrap();
        }
        assert!(matches!(c.insert(()), Err(TokenError::Full)));
        std::thread::sleep(Duration::from_millis(60));
        c.insert(()).unwrap();
    }
}
