//! The `secrets` table: secret name (and scope) -> [`SecretRecord`], the
//! value encrypted under the hub's at-rest key (`crate::secrets`), never
//! plaintext. A fleet-wide value is keyed by the bare name (as before scopes
//! existed); a scoped one by `NAME\u{1f}SCOPE`, so the values of one name are
//! one key range (names are DNS labels: nothing sorts between).

use super::{decode, encode, scan, DbCtx, Store, StoreError, Tx};
use crate::vars::Scope;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Secret name -> the last version given to any of its values. Kept when
/// the values are removed: a version is never given twice.
const SECRET_VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("secret_versions");

/// One secret as stored. `nonce` and `ciphertext` are hex; the plaintext is
/// only ever in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    /// Where this value applies (`crate::vars` precedence); the whole fleet
    /// in records written before scopes existed.
    #[serde(default, skip_serializing_if = "is_fleet")]
    pub scope: Scope,
    /// Unique among all values of this name, ever (a scoped value and the
    /// fleet's never share one, a removed one is never reused): what
    /// manifests carry, so a device switching values always sees a change.
    pub version: u64,
    /// Hex SHA-256 of the value: shown by the API so an operator can check
    /// which value is set without reading it.
    pub sha256: String,
    pub size: u64,
    pub nonce: String,
    pub ciphertext: String,
    pub updated_at: u64,
    pub updated_by: String,
}

fn is_fleet(s: &Scope) -> bool {
    *s == Scope::fleet()
}

/// The row key of `name`'s value at `scope`.
fn key(name: &str, scope: &Scope) -> String {
    if is_fleet(scope) {
        name.to_string()
    } else {
        format!("{name}\u{1f}{}", scope.key())
    }
}

/// Create the table (called by [`Store::open`]).
pub(super) fn create_tables(tx: &mut Tx) -> Result<(), StoreError> {
    tx.txn.open_table(SECRETS).ctx("create tables")?;
    tx.txn.open_table(SECRET_VERSIONS).ctx("create tables")?;
    Ok(())
}

impl Store {
    pub fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.read(|t| scan(&t.open_table(SECRETS).ctx("read secrets")?, "secrets"))
    }
}

impl Tx {
    /// `name`'s value at exactly `scope`.
    pub fn secret_at(&self, name: &str, scope: &Scope) -> Result<Option<SecretRecord>, StoreError> {
        let k = key(name, scope);
        let table = self.txn.open_table(SECRETS).ctx("read secrets")?;
        let v = table.get(k.as_str()).ctx("read secret")?;
        v.map(|v| decode("secrets", &k, v.value())).transpose()
    }

    /// Every value of `name`, at every scope.
    pub fn secret_values(&self, name: &str) -> Result<Vec<SecretRecord>, StoreError> {
        let table = self.txn.open_table(SECRETS).ctx("read secrets")?;
        let end = format!("{name}\u{20}");
        let mut out = Vec::new();
        for row in table.range(name..end.as_str()).ctx("read secrets")? {
            let (k, v) = row.ctx("read secrets")?;
            out.push(decode("secrets", k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        scan(
            &self.txn.open_table(SECRETS).ctx("read secrets")?,
            "secrets",
        )
    }

    /// The version a new value of `name` gets: above every version it ever
    /// had, at any scope (records written before the counter existed
    /// included).
    pub fn next_secret_version(&mut self, name: &str) -> Result<u64, StoreError> {
        let last = {
            let table = self
                .txn
                .open_table(SECRET_VERSIONS)
                .ctx("read secret versions")?;
            let v = table.get(name).ctx("read secret versions")?;
            v.map(|v| v.value()).unwrap_or(0)
        };
        let highest = self
            .secret_values(name)?
            .iter()
            .map(|r| r.version)
            .max()
            .unwrap_or(0);
        let next = last.max(highest).saturating_add(1);
        let mut table = self
            .txn
            .open_table(SECRET_VERSIONS)
            .ctx("write secret versions")?;
        table.insert(name, next).ctx("write secret versions")?;
        Ok(next)
    }

    pub fn put_secret(&mut self, s: &SecretRecord) -> Result<(), StoreError> {
        let k = key(&s.name, &s.scope);
        let mut table = self.txn.open_table(SECRETS).ctx("write secret")?;
        table
            .insert(k.as_str(), encode(s).as_slice())
            .ctx("write secret")?;
        Ok(())
    }

    /// Remove every value whose scope `doomed` picks; returns them.
    pub fn remove_secrets_where(
        &mut self,
        doomed: impl Fn(&Scope) -> bool,
    ) -> Result<Vec<SecretRecord>, StoreError> {
        let gone: Vec<SecretRecord> = self
            .secrets()?
            .into_iter()
            .filter(|r| doomed(&r.scope))
            .collect();
        for r in &gone {
            self.remove_secret(&r.name, &r.scope)?;
        }
        Ok(gone)
    }

    pub fn remove_secret(&mut self, name: &str, scope: &Scope) -> Result<bool, StoreError> {
        let k = key(name, scope);
        let mut table = self.txn.open_table(SECRETS).ctx("remove secret")?;
        let found = table.remove(k.as_str()).ctx("remove secret")?.is_some();
        Ok(found)
    }
}
