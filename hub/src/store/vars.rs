//! The `config` table: scope key (`crate::vars::Scope::key`) -> the
//! configuration variables set at that scope, each with who set it when.

use super::{decode, encode, scan, DbCtx, Store, StoreError, Tx};
use crate::vars::{Scope, Values};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");

/// The variables of one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeVarsRecord {
    pub scope: Scope,
    pub vars: BTreeMap<String, VarRecord>,
}

/// One variable's value and its last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarRecord {
    pub value: String,
    pub updated_at: u64,
    pub updated_by: String,
}

impl ScopeVarsRecord {
    /// Name -> value: what resolution reads.
    pub fn values(&self) -> Values {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }
}

/// Create the table (called by [`Store::open`]).
pub(super) fn create_tables(tx: &mut Tx) -> Result<(), StoreError> {
    tx.txn.open_table(CONFIG).ctx("create tables")?;
    Ok(())
}

impl Store {
    pub fn config(&self) -> Result<Vec<ScopeVarsRecord>, StoreError> {
        self.read(|t| scan(&t.open_table(CONFIG).ctx("read config")?, "config"))
    }
}

impl Tx {
    pub fn config(&self) -> Result<Vec<ScopeVarsRecord>, StoreError> {
        scan(&self.txn.open_table(CONFIG).ctx("read config")?, "config")
    }

    pub fn config_at(&self, scope: &Scope) -> Result<Option<ScopeVarsRecord>, StoreError> {
        let key = scope.key();
        let table = self.txn.open_table(CONFIG).ctx("read config")?;
        let v = table.get(key.as_str()).ctx("read config")?;
        v.map(|v| decode("config", &key, v.value())).transpose()
    }

    /// Store `rec`; a scope left without variables is removed.
    pub fn put_config(&mut self, rec: &ScopeVarsRecord) -> Result<(), StoreError> {
        let key = rec.scope.key();
        let mut table = self.txn.open_table(CONFIG).ctx("write config")?;
        if rec.vars.is_empty() {
            table.remove(key.as_str()).ctx("write config")?;
        } else {
            table
                .insert(key.as_str(), encode(rec).as_slice())
                .ctx("write config")?;
        }
        Ok(())
    }

    /// Remove every scope `doomed` picks; returns them.
    pub fn remove_config_where(
        &mut self,
        doomed: impl Fn(&Scope) -> bool,
    ) -> Result<Vec<ScopeVarsRecord>, StoreError> {
        let gone: Vec<ScopeVarsRecord> = self
            .config()?
            .into_iter()
            .filter(|r| doomed(&r.scope))
            .collect();
        let mut table = self.txn.open_table(CONFIG).ctx("remove config")?;
        for r in &gone {
            table.remove(r.scope.key().as_str()).ctx("remove config")?;
        }
        Ok(gone)
    }
}
