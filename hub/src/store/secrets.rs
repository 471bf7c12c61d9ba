//! The `secrets` table: secret name -> [`SecretRecord`], the value encrypted
//! under the hub's at-rest key (`crate::secrets`), never plaintext.

use super::{decode, encode, scan, DbCtx, Store, StoreError, Tx};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");

/// One secret as stored. `nonce` and `ciphertext` are hex; the plaintext is
/// only ever in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    /// Bumped at every change of the value; what manifests carry.
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

/// Create the table (called by [`Store::open`]).
pub(super) fn create_tables(tx: &mut Tx) -> Result<(), StoreError> {
    tx.txn.open_table(SECRETS).ctx("create tables")?;
    Ok(())
}

impl Store {
    pub fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.read(|t| scan(&t.open_table(SECRETS).ctx("read secrets")?, "secrets"))
    }
}

impl Tx {
    pub fn secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let table = self.txn.open_table(SECRETS).ctx("read secrets")?;
        let v = table.get(name).ctx("read secret")?;
        v.map(|v| decode("secrets", name, v.value())).transpose()
    }

    pub fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        scan(
            &self.txn.open_table(SECRETS).ctx("read secrets")?,
            "secrets",
        )
    }

    /// Name -> current version: what rendering stamps into app specs.
    pub fn secret_versions(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self
            .secrets()?
            .into_iter()
            .map(|s| (s.name, s.version))
            .collect())
    }

    pub fn put_secret(&mut self, s: &SecretRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(SECRETS).ctx("write secret")?;
        table
            .insert(s.name.as_str(), encode(s).as_slice())
            .ctx("write secret")?;
        Ok(())
    }

    pub fn remove_secret(&mut self, name: &str) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(SECRETS).ctx("remove secret")?;
        let found = table.remove(name).ctx("remove secret")?.is_some();
        Ok(found)
    }
}
