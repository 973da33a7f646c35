//! The sealed login context of a grant: what a login source must have again later (a database
//! password, an identity provider's refresh token), sealed with AES-256-GCM under the
//! encryption keys, with the source's name and the grant's id as associated data. It is made
//! when the person signs in, carried by the pending request and the code to the grant, opened
//! only by the source that made it and only for that grant, and erased when the grant ends.
//!
//! Encryption keys stop being optional once a source keeps anything: with SQLite and no
//! `[keys] encryption`, the first start writes a key file beside the database (mode 0600) and
//! says so; with any other store, the start stops with an error naming `keys.encryption`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::{EncryptionKeys, EnvelopeError};
use crate::store::SharedStore;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no encryption keys are configured, so nothing can be sealed")]
    NoKeys,
    #[error("the login context {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("the login context belongs to another login source")]
    NotOwner,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Seals and opens login contexts.
#[derive(Clone, Default)]
pub struct LoginContexts {
    keys: Option<Arc<EncryptionKeys>>,
    /// One renewal per grant at a time in this process (by stripe of the grant id), for
    /// every caller: the token endpoint and the upstreams that use what is kept.
    renewals: Arc<Vec<tokio::sync::Mutex<()>>>,
}

/// What came of renewing a grant's context ([`LoginContexts::renew`]).
pub enum Renewed {
    /// What is kept now (renewed or not): opened.
    Kept(Vec<u8>),
    /// The grant has no context, or has ended.
    Nothing,
    /// The source refused: the grant must end.
    Refused(String),
    /// The source could not be asked, or what is kept cannot be read.
    Unavailable(String),
}

/// The associated data: a context opens only for the source and the grant it was sealed to.
fn row(source: &str, grant_id: &str) -> String {
    format!("login-context\n{source}\n{grant_id}")
}

fn leg_row(source: &str, grant_id: &str) -> String {
    format!("login-leg\n{source}\n{grant_id}")
}

impl LoginContexts {
    pub fn new(keys: Option<Arc<EncryptionKeys>>) -> Self {
        Self {
            keys,
            renewals: Arc::new((0..64).map(|_| tokio::sync::Mutex::new(())).collect()),
        }
    }

    /// Asks `source` to renew what it keeps for `grant` (`force`: even if not due), and
    /// stores the result with a compare-and-set on what was read. A refusal that comes after
    /// another renewal replaced the context (on another instance) was a lost race with
    /// that renewal, not the provider's verdict: the newer context stands.
    pub async fn renew(
        &self,
        store: &SharedStore,
        source: &dyn super::LoginSource,
        grant: &str,
        force: bool,
    ) -> Renewed {
        let stripe = grant
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % self.renewals.len().max(1);
        let _one = match self.renewals.get(stripe) {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        let name = source.name();
        let read = |r: Result<Option<(String, Vec<u8>)>, crate::store::StoreError>| match r {
            Ok(Some((owner, sealed))) if owner == name => Ok(Some(sealed)),
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        let sealed = match read(store.login_context(grant).await) {
            Ok(Some(sealed)) => sealed,
            Ok(None) => return Renewed::Nothing,
            Err(e) => return Renewed::Unavailable(e),
        };
        let Ok(kept) = self.open(name, grant, &sealed) else {
            return Renewed::Unavailable("the login context cannot be opened".into());
        };
        match source.renew(&kept, force).await {
            super::Renewal::Unchanged => Renewed::Kept(kept),
            super::Renewal::Unavailable(why) => Renewed::Unavailable(why),
            super::Renewal::Renewed(renewed) => {
                let Ok(new) = self.seal(name, grant, &renewed) else {
                    return Renewed::Unavailable("the renewed context cannot be sealed".into());
                };
                match store.set_login_context(grant, &new, &sealed).await {
                    Ok(true) => Renewed::Kept(renewed),
                    // Replaced or ended meanwhile: what is there now is what counts.
                    Ok(false) => match read(store.login_context(grant).await) {
                        Ok(Some(now)) => match self.open(name, grant, &now) {
                            Ok(k) => Renewed::Kept(k),
                            Err(_) => Renewed::Nothing,
                        },
                        Ok(None) => Renewed::Nothing,
                        Err(e) => Renewed::Unavailable(e),
                    },
                    Err(e) => Renewed::Unavailable(e.to_string()),
                }
            }
            super::Renewal::Refused(why) => match read(store.login_context(grant).await) {
                Ok(Some(now)) if now != sealed => match self.open(name, grant, &now) {
                    Ok(k) => Renewed::Kept(k),
                    Err(_) => Renewed::Nothing,
                },
                Ok(Some(_)) => Renewed::Refused(why),
                Ok(None) => Renewed::Nothing,
                Err(e) => Renewed::Unavailable(e),
            },
        }
    }

    pub fn seal(
        &self,
        source: &str,
        grant_id: &str,
        plain: &[u8],
    ) -> Result<Vec<u8>, ContextError> {
        self.seal_as(&row(source, grant_id), plain)
    }

    pub fn open(
        &self,
        source: &str,
        grant_id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, ContextError> {
        self.open_as(&row(source, grant_id), sealed)
    }

    /// Seals what a redirecting source needs back on the way in (its PKCE verifier and
    /// nonce) to the request that will create `grant_id`: readable by no other source and
    /// for no other request.
    pub fn seal_leg(
        &self,
        source: &str,
        grant_id: &str,
        plain: &[u8],
    ) -> Result<Vec<u8>, ContextError> {
        self.seal_as(&leg_row(source, grant_id), plain)
    }

    pub fn open_leg(
        &self,
        source: &str,
        grant_id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, ContextError> {
        self.open_as(&leg_row(source, grant_id), sealed)
    }

    /// The encryption keys, when there are any (a configured list, or SQLite's key file).
    pub fn keys(&self) -> Option<&EncryptionKeys> {
        self.keys.as_deref()
    }

    /// Seals `plain` to the identity `row` (associated data): what the broker's vault uses
    /// with the same keys.
    pub fn seal_as(&self, row: &str, plain: &[u8]) -> Result<Vec<u8>, ContextError> {
        let keys = self.keys.as_ref().ok_or(ContextError::NoKeys)?;
        Ok(keys.seal(row, plain)?)
    }

    pub fn open_as(&self, row: &str, sealed: &[u8]) -> Result<Vec<u8>, ContextError> {
        let keys = self.keys.as_ref().ok_or(ContextError::NoKeys)?;
        Ok(keys.open(row, sealed)?)
    }

    /// What `source` kept for a live grant: `None` when the grant has ended (its context went
    /// with it) or never had one; `NotOwner` when another source made the grant.
    pub async fn read(
        &self,
        store: &SharedStore,
        source: &str,
        grant_id: &str,
    ) -> Result<Option<Vec<u8>>, ContextError> {
        let Some((owner, sealed)) = store.login_context(grant_id).await? else {
            return Ok(None);
        };
        if owner != source {
            return Err(ContextError::NotOwner);
        }
        self.open(source, grant_id, &sealed).map(Some)
    }
}

/// The keys that seal login contexts: the configured ones; or when a source needs them and
/// none are configured, on SQLite a key file beside the database (created on first start),
/// elsewhere an error naming the setting.
pub fn resolve_keys(
    configured: Option<EncryptionKeys>,
    store_url: &str,
    needed_by: Option<&str>,
) -> Result<Option<EncryptionKeys>, String> {
    if configured.is_some() {
        return Ok(configured);
    }
    let Some(source) = needed_by else {
        return Ok(None);
    };
    let Some(path) = sqlite_key_file(store_url) else {
        return Err(format!(
            "keys.encryption: {source} seals what it keeps, which needs encryption keys; every instance on a shared store must have the same ones \
             (make one with `mcp-oauth-gateway keys new-encryption-key`)"
        ));
    };
    load_or_create(&path).map(Some)
}

/// `<database file>.keys` for a SQLite file store; none for an in-memory one or another engine.
fn sqlite_key_file(store_url: &str) -> Option<PathBuf> {
    use std::str::FromStr;
    if !store_url.starts_with("sqlite:") || store_url.contains(":memory:") {
        return None;
    }
    if store_url.contains("mode=memory") {
        return None;
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(store_url).ok()?;
    let db = opts.get_filename();
    let mut name = db.file_name()?.to_os_string();
    name.push(".keys");
    Some(db.with_file_name(name))
}

fn load_or_create(path: &Path) -> Result<EncryptionKeys, String> {
    let describe = |e: std::io::Error| format!("the encryption key file {}: {e}", path.display());
    match read_key_file(path) {
        Ok(keys) => return Ok(keys),
        Err(Some(e)) => return Err(e),
        Err(None) => {}
    }
    let entry = EncryptionKeys::generate_entry("file-1")?;
    let text = format!(
        "# Encryption key of the gateway's sealed login contexts. Keep it with the\n\
         # database and back it up with it: without it, what is sealed cannot be read.\n\
         {entry}\n"
    );
    // Written whole under a temporary name, then linked into place, which fails if the
    // file exists: two processes starting at once never see a half-written file, and the
    // one that loses reads the winner's key.
    let temp = path.with_extension(format!("keys.{}", crate::crypto::new_id()));
    let written = create_private(&temp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                "created an encryption key file for sealed login contexts (no `keys.encryption` is configured); back it up with the database"
            );
            EncryptionKeys::parse(&[entry], Some("file-1")).map_err(String::from)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key_file(path).map_err(|e| e.unwrap_or_else(|| "vanished".into()))
        }
        Err(e) => Err(describe(e)),
    }
}

/// The keys in the file; `Err(None)` when there is no file.
fn read_key_file(path: &Path) -> Result<EncryptionKeys, Option<String>> {
    let at = |m: String| Some(format!("the encryption key file {}: {m}", path.display()));
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
        Err(e) => return Err(at(e.to_string())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the encryption key file can be read by others than its owner; make it mode 0600");
        }
    }
    let entries: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if entries.is_empty() {
        return Err(at(
            "it holds no key (restore it from the backup of the database it belongs to)".into(),
        ));
    }
    // The newest entry (last line) is the active one.
    let active = entries
        .last()
        .and_then(|e| e.split(':').next())
        .map(str::to_string);
    EncryptionKeys::parse(&entries, active.as_deref()).map_err(|e| at(e.to_string()))
}

/// A new file only its owner can read.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Arc<EncryptionKeys> {
        let entry = EncryptionKeys::generate_entry("k1").expect("entry");
        Arc::new(EncryptionKeys::parse(&[entry], Some("k1")).expect("keys"))
    }

    #[test]
    fn a_context_opens_only_for_its_source_and_grant() {
        let c = LoginContexts::new(Some(keys()));
        let sealed = c.seal("db", "g1", b"secret password").expect("seal");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            c.open("db", "g1", &sealed).expect("open"),
            b"secret password"
        );
        assert!(c.open("db", "g2", &sealed).is_err(), "another grant's id");
        assert!(c.open("idp", "g1", &sealed).is_err(), "another source");
        assert!(matches!(
            LoginContexts::default().seal("db", "g1", b"x"),
            Err(ContextError::NoKeys)
        ));
    }

    #[test]
    fn the_key_file_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("gw.db").display());
        assert!(
            resolve_keys(None, &url, None)
                .expect("none needed")
                .is_none()
        );
        let first = resolve_keys(None, &url, Some("db"))
            .expect("created")
            .expect("keys");
        let path = dir.path().join("gw.db.keys");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sealed = first.seal("row", b"kept").expect("seal");
        let again = resolve_keys(None, &url, Some("db"))
            .expect("read")
            .expect("keys");
        assert_eq!(again.open("row", &sealed).expect("same key"), b"kept");
        let err = resolve_keys(None, "postgres://127.0.0.1/test", Some("db")).unwrap_err();
        assert!(err.starts_with("keys.encryption:"), "{err}");
    }

    #[test]
    fn processes_starting_together_share_one_key_and_an_empty_file_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("gw.db").display());
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    resolve_keys(None, &url, Some("db"))
                        .expect("keys")
                        .expect("some")
                })
            })
            .collect();
        let keys: Vec<_> = starts
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let sealed = keys[0].seal("row", b"x").expect("seal");
        for k in &keys {
            assert_eq!(k.open("row", &sealed).expect("the same key"), b"x");
        }
        let empty = dir.path().join("e.db.keys");
        std::fs::write(&empty, "# nothing\n").expect("write");
        let url = format!("sqlite://{}", dir.path().join("e.db").display());
        let err = resolve_keys(None, &url, Some("db")).expect_err("refused");
        assert!(err.contains("holds no key"), "{err}");
    }
}
