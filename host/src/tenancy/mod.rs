//! Tenants and their tokens.
//!
//! Every connection belongs to a tenant, decided by its token at the handshake.
//! Sessions, queues and (later) pinned data are keyed by tenant, so quotas and fair
//! share change policy here, not the protocol. A scheduler either has tokens (one
//! generated for the `default` tenant, or those of a config file) or, only when bound
//! to loopback, runs token-less and says so in its log.

use std::path::Path;
use std::sync::Arc;

use crate::proto::HandshakeError;

/// Name of the tenant of a scheduler without a tenant configuration.
pub const DEFAULT_TENANT: &str = "default";

/// Who may connect, and as which tenant.
#[derive(Debug, Clone)]
pub struct Tenants {
    /// `(token, tenant)` pairs; empty in open mode.
    tokens: Vec<(String, Arc<str>)>,
}

/// Errors loading tenant configuration.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// The config file could not be read or parsed.
    #[error("cannot load {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    tenant: Vec<TenantEntry>,
}

#[derive(serde::Deserialize)]
struct TenantEntry {
    name: String,
    token: String,
}

impl Tenants {
    /// One `default` tenant with a freshly generated token.
    pub fn generated() -> Self {
        Self { tokens: vec![(new_token(), Arc::from(DEFAULT_TENANT))] }
    }

    /// One `default` tenant with the given token.
    pub fn single(token: String) -> Self {
        Self { tokens: vec![(token, Arc::from(DEFAULT_TENANT))] }
    }

    /// Token-less: everyone is the `default` tenant. Only for loopback schedulers.
    pub fn open() -> Self {
        Self { tokens: Vec::new() }
    }

    /// Tenants from a `stockade.toml`: `[[tenant]] name = "..." token = "..."`.
    pub fn from_config(path: &Path) -> Result<Self, TenancyError> {
        let err = |reason: String| TenancyError::Config { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let config: ConfigFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if config.tenant.is_empty() {
            return Err(err("no [[tenant]] entries".into()));
        }
        let mut tokens = Vec::new();
        for t in config.tenant {
            if t.token.len() < 16 {
                return Err(err(format!("tenant {}: token must be at least 16 characters", t.name)));
            }
            tokens.push((t.token, Arc::from(t.name.as_str())));
        }
        Ok(Self { tokens })
    }

    /// Whether any token is required.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token written to the scheduler file: the default tenant's, if any.
    pub fn default_token(&self) -> Option<&str> {
        self.tokens.iter().find(|(_, t)| &**t == DEFAULT_TENANT).or(self.tokens.first()).map(|(k, _)| k.as_str())
    }

    /// The tenant a token belongs to.
    pub fn authenticate(&self, token: &str) -> Result<Arc<str>, HandshakeError> {
        if self.is_open() {
            return Ok(Arc::from(DEFAULT_TENANT));
        }
        // Compare every token in full so timing does not tell how much of one matched.
        let mut found = None;
        for (known, tenant) in &self.tokens {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(tenant.clone());
            }
        }
        found.ok_or(HandshakeError::Unauthorized)
    }
}

/// A new random token (256 bits, hex).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness is not something to run a scheduler without.
        tracing::error!("no OS randomness available for a token");
        std::process::abort();
    }
    hex::encode(bytes)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_tenants() {
        let t = Tenants::single("secret-token-123456".into());
        assert_eq!(&*t.authenticate("secret-token-123456").unwrap(), DEFAULT_TENANT);
        assert!(matches!(t.authenticate("secret-token-123457"), Err(HandshakeError::Unauthorized)));
        assert!(matches!(t.authenticate(""), Err(HandshakeError::Unauthorized)));
        assert_eq!(&*Tenants::open().authenticate("anything").unwrap(), DEFAULT_TENANT);
    }

    #[test]
    fn config_file_lists_tenants() {
        let path = std::env::temp_dir().join(format!("stockade-tenants-{}.toml", std::process::id()));
        std::fs::write(&path, "[[tenant]]\nname = \"alice\"\ntoken = \"aaaaaaaaaaaaaaaaaaaa\"\n[[tenant]]\nname = \"bob\"\ntoken = \"bbbbbbbbbbbbbbbbbbbb\"\n").unwrap();
        let t = Tenants::from_config(&path).unwrap();
        assert_eq!(&*t.authenticate("bbbbbbbbbbbbbbbbbbbb").unwrap(), "bob");
        std::fs::write(&path, "[[tenant]]\nname = \"x\"\ntoken = \"short\"\n").unwrap();
        assert!(Tenants::from_config(&path).unwrap_err().to_string().contains("at least 16"));
        std::fs::remove_file(&path).unwrap();
    }
}
