//! The API token tables: `tokens` (name -> [`TokenRecord`]) and
//! `token_hashes` (hex SHA-256 of a live token's secret -> its name), the
//! index a request's bearer token is looked up by. Revoking removes the hash
//! entry, so a revoked secret finds nothing from the next request on.

use super::records::TokenRecord;
use super::{decode, encode, scan, DbCtx, Store, StoreError, Tx};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const TOKEN_HASHES: TableDefinition<&str, &str> = TableDefinition::new("token_hashes");

/// Create the tables (called by [`Store::open`]).
pub(super) fn create_tables(tx: &mut Tx) -> Result<(), StoreError> {
    tx.txn.open_table(TOKENS).ctx("create tables")?;
    tx.txn.open_table(TOKEN_HASHES).ctx("create tables")?;
    Ok(())
}

impl Store {
    /// The live token whose secret hashes to `hash`, if any.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|t| {
            let hashes = t.open_table(TOKEN_HASHES).ctx("read token hashes")?;
            let Some(name) = hashes.get(hash).ctx("read token hash")? else {
                return Ok(None);
            };
            let name = name.value().to_string();
            let tokens = t.open_table(TOKENS).ctx("read tokens")?;
            let v = tokens.get(name.as_str()).ctx("read token")?;
            v.map(|v| decode("tokens", &name, v.value())).transpose()
        })
    }

    /// Every token, revoked ones included, by name.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|t| scan(&t.open_table(TOKENS).ctx("read tokens")?, "tokens"))
    }
}

impl Tx {
    pub fn token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError> {
        let table = self.txn.open_table(TOKENS).ctx("read tokens")?;
        let v = table.get(name).ctx("read token")?;
        v.map(|v| decode("tokens", name, v.value())).transpose()
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        scan(&self.txn.open_table(TOKENS).ctx("read tokens")?, "tokens")
    }

    /// Has any token ever been stored (revoked ones count)?
    pub fn any_token(&self) -> Result<bool, StoreError> {
        let table = self.txn.open_table(TOKENS).ctx("count tokens")?;
        Ok(table.len().ctx("count tokens")? > 0)
    }

    /// Store `t`; its hash authenticates unless it is revoked.
    pub fn put_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        {
            let mut table = self.txn.open_table(TOKENS).ctx("write token")?;
            table
                .insert(t.name.as_str(), encode(t).as_slice())
                .ctx("write token")?;
        }
        let mut hashes = self.txn.open_table(TOKEN_HASHES).ctx("write token hash")?;
        if t.revoked_at.is_some() {
            hashes.remove(t.hash.as_str()).ctx("remove token hash")?;
        } else {
            hashes
                .insert(t.hash.as_str(), t.name.as_str())
                .ctx("write token hash")?;
        }
        Ok(())
    }

    /// Is `hash` some live token's?
    pub fn token_hash_taken(&self, hash: &str) -> Result<bool, StoreError> {
        let hashes = self.txn.open_table(TOKEN_HASHES).ctx("read token hashes")?;
        let found = hashes.get(hash).ctx("read token hash")?.is_some();
        Ok(found)
    }
}
