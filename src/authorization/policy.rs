//! The registration policy: whether dynamic registration is open, whether Client ID
//! Metadata Documents are accepted, and from which domains. It starts as the configuration
//! file's `[registration]` and an administrator can change it while the gateway runs (the
//! console or `registration set`); the change is kept in the store, so every instance on it
//! follows within [`POLICY_TTL_SECS`] (the instance that changed it at once).

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, Timestamp};
use crate::config::{DcrMode, RegistrationConfig};
use crate::store::{SharedStore, StoreError};

/// The setting's name in the store.
pub const SETTING: &str = "registration_policy";
/// How long an instance trusts the policy it read.
pub const POLICY_TTL_SECS: i64 = 5;
/// Most domains in one list.
const MAX_DOMAINS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationPolicy {
    pub dcr: DcrMode,
    pub cimd: bool,
    /// When not empty, only metadata documents on these hosts are accepted (exact, or
    /// `*.example.com` for its subdomains).
    pub cimd_allowed_domains: Vec<String>,
    /// Metadata documents on these hosts are refused, whatever the allowed list says.
    pub cimd_blocked_domains: Vec<String>,
    /// Registered and metadata document clients wait for an administrator's approval before
    /// anyone can authorize them (configured clients never wait; grants made before stay).
    #[serde(default)]
    pub approve_new_clients: bool,
}

/// Whether `host` (lower case) is `pattern`, or under it for `*.parent`.
pub fn domain_matches(host: &str, pattern: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .strip_suffix(parent)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => host == pattern,
    }
}

/// A domain pattern as an administrator may write it: a host name (letters, digits, `-`,
/// `.`), optionally `*.` before it; lower-cased. Anything else (a scheme, a path, a port, an
/// IP address with a wildcard) is refused rather than matching nothing in silence.
pub fn normal_domain(pattern: &str) -> Result<String, String> {
    let p = pattern.trim().to_ascii_lowercase();
    let host = p.strip_prefix("*.").unwrap_or(&p);
    let labels_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !labels_ok {
        return Err(format!(
            "`{}` is not a domain: write a host name such as `example.com` or `*.example.com`",
            crate::observe::audit::bounded(pattern.trim())
        ));
    }
    Ok(p)
}

impl RegistrationPolicy {
    /// The file's policy, its domains written one way (configuration checks refused any that
    /// is not a domain before this; such a one is lower-cased and matches nothing).
    pub fn from_config(r: &RegistrationConfig) -> Self {
        let normal = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|d| normal_domain(d).unwrap_or_else(|_| d.to_ascii_lowercase()))
                .collect()
        };
        Self {
            dcr: r.dcr,
            cimd: r.cimd,
            cimd_allowed_domains: normal(&r.cimd_allowed_domains),
            cimd_blocked_domains: normal(&r.cimd_blocked_domains),
            approve_new_clients: r.approve_new_clients,
        }
    }

    /// The same policy with every domain checked and written one way; an error names the
    /// first that is not a domain.
    pub fn normalized(mut self) -> Result<Self, String> {
        for list in [
            &mut self.cimd_allowed_domains,
            &mut self.cimd_blocked_domains,
        ] {
            if list.len() > MAX_DOMAINS {
                return Err(format!("at most {MAX_DOMAINS} domains in a list"));
            }
            let mut out = Vec::with_capacity(list.len());
            for d in list.iter() {
                let d = normal_domain(d)?;
                if !out.contains(&d) {
                    out.push(d);
                }
            }
            *list = out;
        }
        Ok(self)
    }

    /// Why a metadata document client of this id is refused, or `None` when its host may
    /// serve one.
    pub fn cimd_refusal(&self, client_id: &str) -> Option<&'static str> {
        let host = url::Url::parse(client_id)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        // `evil.net.` is `evil.net` to a resolver: it must be to the lists too.
        let host = host.trim_end_matches('.');
        if self
            .cimd_blocked_domains
            .iter()
            .any(|d| domain_matches(host, d))
        {
            return Some("client metadata documents from this domain are refused by the gateway");
        }
        if !self.cimd_allowed_domains.is_empty()
            && !self
                .cimd_allowed_domains
                .iter()
                .any(|d| domain_matches(host, d))
        {
            return Some("client metadata documents are accepted only from other domains");
        }
        None
    }
}

/// The policy as this instance knows it: read from the store at most every
/// [`POLICY_TTL_SECS`], the configuration's when the store holds none.
pub struct PolicyCache {
    store: SharedStore,
    clock: SharedClock,
    configured: Arc<RegistrationPolicy>,
    /// The policy and when it was read; `None` before the first read and after `forget`.
    current: RwLock<Option<(Arc<RegistrationPolicy>, Timestamp)>>,
}

impl PolicyCache {
    pub fn new(store: SharedStore, clock: SharedClock, configured: RegistrationPolicy) -> Self {
        Self {
            store,
            clock,
            configured: Arc::new(configured),
            current: RwLock::new(None),
        }
    }

    /// The policy now. A store that cannot be read leaves the last one known in force (the
    /// configuration's, before any), and is asked again next time.
    pub async fn get(&self) -> Arc<RegistrationPolicy> {
        let now = self.clock.now();
        if let Ok(guard) = self.current.read()
            && let Some((p, at)) = guard.as_ref()
            && now - at < POLICY_TTL_SECS
            && now >= *at
        {
            return p.clone();
        }
        match read(&self.store, &self.configured).await {
            Ok(p) => {
                let p = Arc::new(p);
                if let Ok(mut guard) = self.current.write() {
                    *guard = Some((p.clone(), now));
                }
                p
            }
            Err(e) => {
                tracing::warn!(error = %e, "the registration policy could not be read; the last one known applies");
                self.last()
            }
        }
    }

    /// The policy last read, without asking the store (for what must not wait: metadata).
    pub fn last(&self) -> Arc<RegistrationPolicy> {
        self.current
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|(p, _)| p.clone()))
            .unwrap_or_else(|| self.configured.clone())
    }

    /// Reads the store again next time (after this instance changed it).
    pub fn forget(&self) {
        if let Ok(mut guard) = self.current.write() {
            *guard = None;
        }
    }
}

/// The policy in the store, or `configured` when it holds none. A stored policy that no
/// longer reads (written by a newer version) is refused loudly rather than ignored.
pub async fn read(
    store: &SharedStore,
    configured: &RegistrationPolicy,
) -> Result<RegistrationPolicy, StoreError> {
    match store.setting(SETTING).await? {
        None => Ok(configured.clone()),
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            StoreError::Backend(format!("the stored registration policy does not read: {e}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], blocked: &[&str]) -> RegistrationPolicy {
        RegistrationPolicy {
            dcr: DcrMode::Open,
            cimd: true,
            cimd_allowed_domains: allowed.iter().map(|s| s.to_string()).collect(),
            cimd_blocked_domains: blocked.iter().map(|s| s.to_string()).collect(),
            approve_new_clients: false,
        }
        .normalized()
        .unwrap()
    }

    #[test]
    fn blocked_domains_win_and_allowed_lists_close_everything_else() {
        let p = policy(&["*.Example.com", "tools.dev"], &["bad.example.com"]);
        assert_eq!(p.cimd_allowed_domains[0], "*.example.com");
        assert!(
            p.cimd_refusal("https://app.example.com/client.json")
                .is_none()
        );
        assert!(p.cimd_refusal("https://tools.dev/c").is_none());
        assert!(p.cimd_refusal("https://bad.example.com/c").is_some());
        assert!(p.cimd_refusal("https://x.bad.example.com/c").is_none());
        // Not a subdomain: the parent itself, and a look-alike suffix.
        assert!(p.cimd_refusal("https://example.com/c").is_some());
        assert!(p.cimd_refusal("https://evilexample.com/c").is_some());
        assert!(p.cimd_refusal("https://tools.dev.evil.net/c").is_some());
        // Userinfo cannot pose as the host.
        assert!(
            p.cimd_refusal("https://tools.dev@evil.net/c").is_some(),
            "the host is evil.net"
        );
        let open = policy(&[], &["*.evil.net"]);
        assert!(open.cimd_refusal("https://anything.org/c").is_none());
        assert!(open.cimd_refusal("https://a.evil.net/c").is_some());
        assert!(open.cimd_refusal("https://A.EVIL.NET./c").is_some());
        assert!(open.cimd_refusal("https://a.evil.net.:443/c").is_some());
        assert!(open.cimd_refusal("https://a%2eevil.net/c").is_some());
    }

    #[test]
    fn the_files_domains_are_written_one_way() {
        let r = RegistrationConfig {
            cimd_blocked_domains: vec!["Evil.Example".into(), " *.Bad.example ".into()],
            ..Default::default()
        };
        let p = RegistrationPolicy::from_config(&r);
        assert!(p.cimd_refusal("https://evil.example/c").is_some());
        assert!(p.cimd_refusal("https://a.bad.example/c").is_some());
    }

    #[test]
    fn only_host_names_are_domains() {
        for bad in [
            "https://example.com",
            "example.com/path",
            "example.com:443",
            "*",
            "*.",
            "",
            "exa mple.com",
            "-x.com",
            "a..b",
        ] {
            assert!(normal_domain(bad).is_err(), "{bad}");
        }
        assert_eq!(normal_domain(" *.Example.COM ").unwrap(), "*.example.com");
    }
}
