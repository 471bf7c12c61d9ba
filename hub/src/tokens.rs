//! API tokens: making one (a random secret, shown once; only its SHA-256 is
//! stored), revoking one, turning a request's bearer secret into a
//! [`Caller`], and the first admin token of a data directory.
//!
//! Every change is one store transaction with its audit entry. The time is
//! passed in (the hub's clock).
//!
//! The secret is 32 random bytes, so a plain SHA-256 (no salt, no stretching)
//! is enough: there is no dictionary to try. A lookup by hash also means no
//! secret is ever compared byte by byte.

use crate::access::{Caller, Role};
use crate::config::DataDir;
use crate::scope::Scope;
use crate::store::{AuditEntry, Store, StoreError, TokenRecord, Tx};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The name of the admin token `init` makes (its secret is the data
/// directory's `token` file).
pub const FIRST_ADMIN: &str = "admin";

/// `last_used` is written when it is at least this old, so a busy client costs
/// one write every few minutes, not one per request.
pub const LAST_USED_EVERY_SECS: u64 = 300;

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token name {name:?} is invalid: {problem}")]
    BadName { name: String, problem: &'static str },
    #[error("an admin token is never scoped (scope {scope} given); make an operator or viewer token for part of the fleet")]
    ScopedAdmin { scope: Scope },
    #[error("token {name:?} already exists{}; names are not reused", if *.revoked { " (revoked)" } else { "" })]
    Exists { name: String, revoked: bool },
    #[error("token {name:?} not found")]
    NotFound { name: String },
    #[error("token {name:?} is already revoked")]
    AlreadyRevoked { name: String },
    #[error("token {name:?} is the last admin token; make another admin token before revoking it")]
    LastAdmin { name: String },
    #[error("cannot make a token secret: {0}")]
    Secret(#[from] crate::signing::KeyFileError),
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the admin token file {path} is empty")]
    Empty { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token as the API lists it: everything but the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub created_at: u64,
    pub created_by: String,
    pub last_used: Option<u64>,
    pub revoked_at: Option<u64>,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        TokenView {
            name: t.name.clone(),
            role: t.role,
            scope: t.scope.clone(),
            created_at: t.created_at,
            created_by: t.created_by.clone(),
            last_used: t.last_used,
            revoked_at: t.revoked_at,
        }
    }
}

/// A token just made: its view and its secret (shown this once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    #[serde(flatten)]
    pub token: TokenView,
    pub secret: String,
}

/// Hex SHA-256 of a secret: what the store keeps.
pub fn hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, secret.trim().as_bytes()).as_ref())
}

/// 1 to 64 of `A-Z a-z 0-9 . _ - @`.
pub fn check_name(name: &str) -> Result<(), TokenError> {
    let bad = |problem| TokenError::BadName {
        name: name.to_string(),
        problem,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("it must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(bad("use letters, digits and . _ - @ only"));
    }
    Ok(())
}

fn audit(
    tx: &mut Tx,
    now: u64,
    who: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    tx.append_audit(AuditEntry {
        seq: 0,
        at: now,
        who: who.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        detail,
    })
    .map(|_| ())
}

/// A new, live token record for `secret`.
fn record(name: &str, role: Role, scope: Scope, secret: &str, who: &str, now: u64) -> TokenRecord {
    TokenRecord {
        name: name.to_string(),
        role,
        scope,
        hash: hash(secret),
        created_at: now,
        created_by: who.to_string(),
        last_used: None,
        revoked_at: None,
    }
}

/// Store a new token with its audit entry; `how` says where it came from.
fn insert(tx: &mut Tx, rec: &TokenRecord, how: &str) -> Result<(), TokenError> {
    if let Some(old) = tx.token(&rec.name)? {
        return Err(TokenError::Exists {
            name: rec.name.clone(),
            revoked: old.revoked_at.is_some(),
        });
    }
    tx.put_token(rec)?;
    audit(
        tx,
        rec.created_at,
        &rec.created_by,
        "token.create",
        &rec.name,
        serde_json::json!({ "role": rec.role, "scope": rec.scope, "how": how }),
    )?;
    Ok(())
}

/// Make a token; `who` is the caller's `token:<name>`.
pub fn create(
    store: &Store,
    name: &str,
    role: Role,
    scope: Scope,
    who: &str,
    now: u64,
) -> Result<NewToken, TokenError> {
    check_name(name)?;
    if role == Role::Admin && !scope.is_everything() {
        return Err(TokenError::ScopedAdmin { scope });
    }
    let secret = crate::signing::new_token()?;
    let rec = record(name, role, scope, &secret, who, now);
    store.write(|tx| insert(tx, &rec, "api"))?;
    tracing::info!(token = %rec.name, role = %rec.role, scope = %rec.scope, by = who, "API token created");
    Ok(NewToken {
        token: TokenView::from(&rec),
        secret,
    })
}

/// Revoke a token: from the next request on its secret authenticates nothing.
pub fn revoke(store: &Store, name: &str, who: &str, now: u64) -> Result<TokenView, TokenError> {
    let rec = store.write(|tx| {
        let mut rec = tx.token(name)?.ok_or_else(|| TokenError::NotFound {
            name: name.to_string(),
        })?;
        if rec.revoked_at.is_some() {
            return Err(TokenError::AlreadyRevoked {
                name: name.to_string(),
            });
        }
        if rec.role == Role::Admin {
            let live_admins = tx
                .tokens()?
                .iter()
                .filter(|t| t.role == Role::Admin && t.revoked_at.is_none())
                .count();
            if live_admins <= 1 {
                return Err(TokenError::LastAdmin {
                    name: name.to_string(),
                });
            }
        }
        rec.revoked_at = Some(now);
        tx.put_token(&rec)?;
        audit(
            tx,
            now,
            who,
            "token.revoke",
            name,
            serde_json::json!({ "role": rec.role, "scope": rec.scope }),
        )?;
        Ok::<_, TokenError>(rec)
    })?;
    tracing::info!(token = %rec.name, by = who, "API token revoked");
    Ok(TokenView::from(&rec))
}

/// The caller a bearer secret stands for; `None` for an unknown or revoked
/// one. Records `last_used` (at most every [`LAST_USED_EVERY_SECS`]).
pub fn authenticate(store: &Store, secret: &str, now: u64) -> Result<Option<Caller>, StoreError> {
    let Some(rec) = store.token_by_hash(&hash(secret))? else {
        return Ok(None);
    };
    if rec.revoked_at.is_some() {
        return Ok(None);
    }
    if rec
        .last_used
        .is_none_or(|t| now.saturating_sub(t) >= LAST_USED_EVERY_SECS)
    {
        store.write(|tx| {
            if let Some(mut r) = tx.token(&rec.name)?.filter(|r| r.revoked_at.is_none()) {
                r.last_used = Some(now);
                tx.put_token(&r)?;
            }
            Ok::<_, StoreError>(())
        })?;
    }
    Ok(Some(Caller {
        name: rec.name,
        role: rec.role,
        scope: rec.scope,
    }))
}

/// The first admin token: if the store has never held a token, the data
/// directory's `token` file becomes the `admin` token (so `init`, a data
/// directory from before tokens existed, and the CLI on the hub's machine all
/// work unchanged). Returns the name when it made one. Never again once any
/// token exists, revoked ones included: a revoked secret left in the file
/// does not come back.
pub fn bootstrap(store: &Store, dir: &DataDir, now: u64) -> Result<Option<String>, TokenError> {
    let path = dir.token();
    let made = store.write(|tx| {
        if tx.any_token()? {
            return Ok::<_, TokenError>(false);
        }
        let secret = std::fs::read_to_string(&path).map_err(|source| TokenError::Read {
            path: path.clone(),
            source,
        })?;
        if secret.trim().is_empty() {
            return Err(TokenError::Empty { path: path.clone() });
        }
        let rec = record(
            FIRST_ADMIN,
            Role::Admin,
            Scope::default(),
            &secret,
            "hub",
            now,
        );
        insert(tx, &rec, "the data directory's token file")?;
        Ok(true)
    })?;
    if made {
        tracing::info!(token = FIRST_ADMIN, file = %path.display(), "admin API token created from the data directory's token file");
    }
    Ok(made.then(|| FIRST_ADMIN.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let store = Store::open(&dir.database()).unwrap();
        std::fs::write(dir.token(), "s3cret-admin\n").unwrap();
        (tmp, store, dir)
    }

    #[test]
    fn the_token_file_becomes_the_admin_token_once() {
        let (_tmp, store, dir) = store();
        assert_eq!(
            bootstrap(&store, &dir, 1).unwrap().as_deref(),
            Some("admin")
        );
        assert_eq!(bootstrap(&store, &dir, 2).unwrap(), None);
        let c = authenticate(&store, "s3cret-admin", 3).unwrap().unwrap();
        assert_eq!((c.name.as_str(), c.role), ("admin", Role::Admin));
        // Only the hash is stored.
        let recs = store.tokens().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].hash, hash("s3cret-admin"));
        assert_eq!(recs[0].last_used, Some(3));
        let audit = store.audit(10).unwrap();
        assert_eq!(
            (audit[0].action.as_str(), audit[0].who.as_str()),
            ("token.create", "hub")
        );
    }

    #[test]
    fn made_tokens_authenticate_until_revoked_and_names_are_not_reused() {
        let (_tmp, store, dir) = store();
        bootstrap(&store, &dir, 1).unwrap();
        let site_a = Scope::parse("site=a").unwrap();
        let op = create(
            &store,
            "ops-a",
            Role::Operator,
            site_a.clone(),
            "token:admin",
            5,
        )
        .unwrap();
        assert_eq!(op.token.scope, site_a);
        assert!(!store.tokens().unwrap().iter().any(|t| t.hash == op.secret));
        let c = authenticate(&store, &op.secret, 6).unwrap().unwrap();
        assert_eq!((c.role, c.scope), (Role::Operator, site_a.clone()));
        assert!(authenticate(&store, "wrong", 6).unwrap().is_none());

        revoke(&store, "ops-a", "token:admin", 7).unwrap();
        assert!(authenticate(&store, &op.secret, 8).unwrap().is_none());
        let e = create(
            &store,
            "ops-a",
            Role::Viewer,
            Scope::default(),
            "token:admin",
            9,
        )
        .unwrap_err();
        assert!(matches!(e, TokenError::Exists { revoked: true, .. }), "{e}");
        assert!(matches!(
            revoke(&store, "ops-a", "x", 9),
            Err(TokenError::AlreadyRevoked { .. })
        ));
        assert!(matches!(
            revoke(&store, "nope", "x", 9),
            Err(TokenError::NotFound { .. })
        ));

        // The last admin stays; a second one makes the first revocable.
        assert!(matches!(
            revoke(&store, "admin", "x", 9),
            Err(TokenError::LastAdmin { .. })
        ));
        create(
            &store,
            "admin2",
            Role::Admin,
            Scope::default(),
            "token:admin",
            10,
        )
        .unwrap();
        revoke(&store, "admin", "token:admin2", 11).unwrap();
        assert!(authenticate(&store, "s3cret-admin", 12).unwrap().is_none());
        // The revoked secret in the token file does not come back.
        assert_eq!(bootstrap(&store, &dir, 13).unwrap(), None);
        assert!(authenticate(&store, "s3cret-admin", 14).unwrap().is_none());
    }

    #[test]
    fn bad_names_and_scoped_admins_are_refused() {
        let (_tmp, store, _dir) = store();
        for bad in ["", "has space", "ümlaut", &"x".repeat(65)] {
            assert!(matches!(
                create(&store, bad, Role::Viewer, Scope::default(), "t", 1),
                Err(TokenError::BadName { .. })
            ));
        }
        let e = create(
            &store,
            "a",
            Role::Admin,
            Scope::parse("site=a").unwrap(),
            "t",
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("site=a"), "{e}");
    }

    #[test]
    fn last_used_is_written_only_every_few_minutes() {
        let (_tmp, store, dir) = store();
        bootstrap(&store, &dir, 0).unwrap();
        let last = |s: &Store| s.tokens().unwrap()[0].last_used;
        authenticate(&store, "s3cret-admin", 100).unwrap();
        assert_eq!(last(&store), Some(100));
        authenticate(&store, "s3cret-admin", 100 + LAST_USED_EVERY_SECS - 1).unwrap();
        assert_eq!(last(&store), Some(100));
        authenticate(&store, "s3cret-admin", 100 + LAST_USED_EVERY_SECS).unwrap();
        assert_eq!(last(&store), Some(100 + LAST_USED_EVERY_SECS));
    }
}
