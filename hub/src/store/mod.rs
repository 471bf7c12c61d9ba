//! The hub's durable state in one redb file: devices, deployments, the signed
//! manifest and generation of each device, last verified status, device events,
//! reject counters, the append-only audit log, each deployment's latest rollout and
//! the API tokens (`tokens.rs`), secrets (`secrets.rs`) and configuration
//! variables (`vars.rs`).
//!
//! Records are JSON in `&[u8]` values (readable with any redb tool, tolerant of
//! added fields); signed manifests are stored as the exact bytes that get
//! published. Every mutation runs in one write transaction ([`Store::write`]) so an
//! apply touching 10,000 devices costs one fsync, not 10,000.

mod records;
mod secrets;
mod tokens;
mod vars;

pub use records::TokenRecord;
pub use records::{
    AdmittedDevice, AuditEntry, DeploymentRecord, DeviceMarks, DeviceRecord, EventRecord,
    ManifestMeta, RolloutRecord, StatusRecord,
};
pub use secrets::SecretRecord;
pub use vars::{ScopeVarsRecord, VarRecord};

use outpost_protocol::DeviceId;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
/// Kept when a device is removed: re-adding it must never restart its generations
/// below what the device already accepted.
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
const MANIFEST_BYTES: TableDefinition<&str, &[u8]> = TableDefinition::new("manifest_bytes");
const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("status");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Device id -> [`DeviceMarks`] (status order, event watermark). Kept when a
/// device is removed, like its manifest.
const MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("marks");
/// Deployment name -> its latest [`RolloutRecord`].
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");

/// Events kept per device (by seq window); older ones are pruned on insert.
pub const EVENTS_KEPT_PER_DEVICE: u64 = 10_000;

/// Why the store failed; names the operation and, for bad records, table and key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("database error during {op}: {source}")]
    Db {
        op: &'static str,
        source: Box<redb::Error>,
    },
    #[error("corrupt record in table {table} at key {key:?}: {detail}")]
    Corrupt {
        table: &'static str,
        key: String,
        detail: String,
    },
}

trait DbCtx<T> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbCtx<T> for Result<T, E> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db {
            op,
            source: Box::new(e.into()),
        })
    }
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_string(),
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our record types are plain structs with string keys: encoding cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// redb's page cache. Its default is 1 GiB, which the hub grew into (about
/// 135 MiB more RSS per 10,000-device deploy round, never given back); the
/// working set of a 10,000-device fleet (manifests, last statuses) is a few
/// tens of MiB, and a miss costs a read of the page cache, not of the disk.
const CACHE_BYTES: usize = 64 << 20;

impl Store {
    /// Open (or create) the database and make sure every table exists.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: Box::new(e.into()),
            })?;
        let store = Store { db: Arc::new(db) };
        store.write(|tx| {
            tx.txn.open_table(DEVICES).ctx("create tables")?;
            tx.txn.open_table(DEPLOYMENTS).ctx("create tables")?;
            tx.txn.open_table(MANIFESTS).ctx("create tables")?;
            tx.txn.open_table(MANIFEST_BYTES).ctx("create tables")?;
            tx.txn.open_table(STATUS).ctx("create tables")?;
            tx.txn.open_table(EVENTS).ctx("create tables")?;
            tx.txn.open_table(AUDIT).ctx("create tables")?;
            tx.txn.open_table(COUNTERS).ctx("create tables")?;
            tx.txn.open_table(MARKS).ctx("create tables")?;
            tx.txn.open_table(ROLLOUTS).ctx("create tables")?;
            tokens::create_tables(tx)?;
            secrets::create_tables(tx)?;
            vars::create_tables(tx)?;
            Ok::<_, StoreError>(())
        })?;
        Ok(store)
    }

    /// Run `f` in one write transaction committed with `Durability::Immediate`
    /// (manifests and generations must survive a power cut once acknowledged).
    /// Nothing is committed if `f` fails.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut txn = self.db.begin_write().ctx("begin write").map_err(E::from)?;
        txn.set_durability(Durability::Immediate)
            .ctx("set durability")
            .map_err(E::from)?;
        let mut tx = Tx { txn };
        let out = f(&mut tx)?;
        tx.txn.commit().ctx("commit").map_err(E::from)?;
        Ok(out)
    }

    /// Like [`Store::write`], but `f` says whether to commit: a periodic task
    /// that usually finds nothing to change aborts instead of paying an fsync.
    pub fn write_if<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tx) -> Result<(T, bool), E>,
    ) -> Result<T, E> {
        let mut txn = self.db.begin_write().ctx("begin write").map_err(E::from)?;
        txn.set_durability(Durability::Immediate)
            .ctx("set durability")
            .map_err(E::from)?;
        let mut tx = Tx { txn };
        let (out, commit) = f(&mut tx)?;
        if commit {
            tx.txn.commit().ctx("commit").map_err(E::from)?;
        } else {
            tx.txn.abort().ctx("abort").map_err(E::from)?;
        }
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        f(&txn)
    }

    pub fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(|t| {
            let table = t.open_table(DEVICES).ctx("read devices")?;
            let v = table.get(id.as_str()).ctx("read device")?;
            v.map(|v| decode("devices", id.as_str(), v.value()))
                .transpose()
        })
    }

    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(|t| scan(&t.open_table(DEVICES).ctx("read devices")?, "devices"))
    }

    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.read(|t| {
            scan(
                &t.open_table(DEPLOYMENTS).ctx("read deployments")?,
                "deployments",
            )
        })
    }

    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.read(|t| scan(&t.open_table(ROLLOUTS).ctx("read rollouts")?, "rollouts"))
    }

    pub fn rollout(&self, deployment: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.read(|t| {
            let table = t.open_table(ROLLOUTS).ctx("read rollouts")?;
            let v = table.get(deployment).ctx("read rollout")?;
            v.map(|v| decode("rollouts", deployment, v.value()))
                .transpose()
        })
    }

    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        self.read(|t| {
            let table = t.open_table(DEPLOYMENTS).ctx("read deployments")?;
            let v = table.get(name).ctx("read deployment")?;
            v.map(|v| decode("deployments", name, v.value()))
                .transpose()
        })
    }

    pub fn manifest_meta(&self, id: &DeviceId) -> Result<Option<ManifestMeta>, StoreError> {
        self.read(|t| {
            let table = t.open_table(MANIFESTS).ctx("read manifests")?;
            let v = table.get(id.as_str()).ctx("read manifest")?;
            v.map(|v| decode("manifests", id.as_str(), v.value()))
                .transpose()
        })
    }

    pub fn manifest_metas(&self) -> Result<BTreeMap<String, ManifestMeta>, StoreError> {
        self.read(|t| scan_map(&t.open_table(MANIFESTS).ctx("read manifests")?, "manifests"))
    }

    /// The signed bytes of a registered device's current manifest.
    pub fn manifest_bytes(&self, id: &DeviceId) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|t| {
            let table = t.open_table(MANIFEST_BYTES).ctx("read manifest bytes")?;
            let v = table.get(id.as_str()).ctx("read manifest bytes")?;
            Ok(v.map(|v| v.value().to_vec()))
        })
    }

    /// Signed manifests of every registered device (for republishing on start).
    pub fn all_manifest_bytes(&self) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        self.read(|t| {
            let devices = t.open_table(DEVICES).ctx("read devices")?;
            let bytes = t.open_table(MANIFEST_BYTES).ctx("read manifest bytes")?;
            let mut out = Vec::new();
            for row in bytes.iter().ctx("scan manifest bytes")? {
                let (k, v) = row.ctx("scan manifest bytes")?;
                let id = k.value();
                if devices.get(id).ctx("read device")?.is_none() {
                    continue;
                }
                let Ok(device) = id.parse::<DeviceId>() else {
                    continue;
                };
                out.push((device, v.value().to_vec()));
            }
            Ok(out)
        })
    }

    pub fn status(&self, id: &DeviceId) -> Result<Option<StatusRecord>, StoreError> {
        self.read(|t| {
            let table = t.open_table(STATUS).ctx("read status")?;
            let v = table.get(id.as_str()).ctx("read status")?;
            v.map(|v| decode("status", id.as_str(), v.value()))
                .transpose()
        })
    }

    pub fn statuses(&self) -> Result<BTreeMap<String, StatusRecord>, StoreError> {
        self.read(|t| scan_map(&t.open_table(STATUS).ctx("read status")?, "status"))
    }

    /// Delivery marks of every registered device, for the key it is registered
    /// with (fresh marks where none are stored or they belong to an older key).
    pub fn registered_marks(&self) -> Result<Vec<(DeviceId, DeviceMarks)>, StoreError> {
        self.read(|t| {
            let devices = t.open_table(DEVICES).ctx("read devices")?;
            let marks = t.open_table(MARKS).ctx("read marks")?;
            let mut out = Vec::new();
            for row in devices.iter().ctx("scan devices")? {
                let (k, v) = row.ctx("scan devices")?;
                let d: DeviceRecord = decode("devices", k.value(), v.value())?;
                let stored = marks.get(k.value()).ctx("read marks")?;
                let m = stored
                    .map(|v| decode::<DeviceMarks>("marks", k.value(), v.value()))
                    .transpose()?;
                out.push((d.id, for_key(m, &d.public_key)));
            }
            Ok(out)
        })
    }

    /// Delivery marks of one registered device (`None` if not registered).
    pub fn device_marks(&self, id: &DeviceId) -> Result<Option<DeviceMarks>, StoreError> {
        let Some(d) = self.device(id)? else {
            return Ok(None);
        };
        self.read(|t| {
            let marks = t.open_table(MARKS).ctx("read marks")?;
            let m = marks
                .get(id.as_str())
                .ctx("read marks")?
                .map(|v| decode::<DeviceMarks>("marks", id.as_str(), v.value()))
                .transpose()?;
            Ok(Some(for_key(m, &d.public_key)))
        })
    }

    /// Events of `id` with `seq > after`, oldest first, at most `limit`.
    pub fn events(
        &self,
        id: &DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.read(|t| {
            let table = t.open_table(EVENTS).ctx("read events")?;
            let mut out = Vec::new();
            if after == u64::MAX {
                return Ok(out);
            }
            let range = table
                .range((id.as_str(), after + 1)..=(id.as_str(), u64::MAX))
                .ctx("scan events")?;
            for row in range.take(limit) {
                let (k, v) = row.ctx("scan events")?;
                let (_, seq) = k.value();
                out.push(decode("events", &format!("{id}/{seq}"), v.value())?);
            }
            Ok(out)
        })
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|t| {
            let table = t.open_table(AUDIT).ctx("read audit")?;
            let mut out = Vec::new();
            for row in table.iter().ctx("scan audit")?.rev().take(limit) {
                let (k, v) = row.ctx("scan audit")?;
                out.push(decode("audit", &k.value().to_string(), v.value())?);
            }
            Ok(out)
        })
    }

    pub fn counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.read(|t| {
            let table = t.open_table(COUNTERS).ctx("read counters")?;
            let mut out = BTreeMap::new();
            for row in table.iter().ctx("scan counters")? {
                let (k, v) = row.ctx("scan counters")?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        })
    }
}

/// Stored marks if they belong to `key`, else fresh ones for it.
fn for_key(m: Option<DeviceMarks>, key: &outpost_protocol::PublicKey) -> DeviceMarks {
    m.filter(|m| &m.key == key)
        .unwrap_or_else(|| DeviceMarks::new(*key))
}

fn scan<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter().ctx("scan")? {
        let (k, v) = row.ctx("scan")?;
        out.push(decode(name, k.value(), v.value())?);
    }
    Ok(out)
}

fn scan_map<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
) -> Result<BTreeMap<String, T>, StoreError> {
    let mut out = BTreeMap::new();
    for row in table.iter().ctx("scan")? {
        let (k, v) = row.ctx("scan")?;
        out.insert(k.value().to_string(), decode(name, k.value(), v.value())?);
    }
    Ok(out)
}

/// A write transaction with typed accessors.
pub struct Tx {
    txn: redb::WriteTransaction,
}

impl Tx {
    pub fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let table = self.txn.open_table(DEVICES).ctx("read devices")?;
        let v = table.get(id.as_str()).ctx("read device")?;
        v.map(|v| decode("devices", id.as_str(), v.value()))
            .transpose()
    }

    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        scan(
            &self.txn.open_table(DEVICES).ctx("read devices")?,
            "devices",
        )
    }

    pub fn put_device(&mut self, d: &DeviceRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(DEVICES).ctx("write device")?;
        table
            .insert(d.id.as_str(), encode(d).as_slice())
            .ctx("write device")?;
        Ok(())
    }

    /// Remove a device and its status. Its manifest (bytes and generation) and
    /// events stay: if it is re-added it must get the same generation back, never
    /// a different manifest under a generation it already accepted.
    pub fn remove_device(&mut self, id: &DeviceId) -> Result<bool, StoreError> {
        let existed = {
            let mut table = self.txn.open_table(DEVICES).ctx("remove device")?;
            let existed = table.remove(id.as_str()).ctx("remove device")?.is_some();
            existed
        };
        let mut t = self.txn.open_table(STATUS).ctx("remove device")?;
        t.remove(id.as_str()).ctx("remove device")?;
        Ok(existed)
    }

    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        scan(
            &self.txn.open_table(DEPLOYMENTS).ctx("read deployments")?,
            "deployments",
        )
    }

    pub fn put_deployment(&mut self, d: &DeploymentRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(DEPLOYMENTS).ctx("write deployment")?;
        table
            .insert(d.spec.name.as_str(), encode(d).as_slice())
            .ctx("write deployment")?;
        Ok(())
    }

    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        scan(
            &self.txn.open_table(ROLLOUTS).ctx("read rollouts")?,
            "rollouts",
        )
    }

    pub fn rollout(&self, deployment: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let table = self.txn.open_table(ROLLOUTS).ctx("read rollouts")?;
        let v = table.get(deployment).ctx("read rollout")?;
        v.map(|v| decode("rollouts", deployment, v.value()))
            .transpose()
    }

    pub fn put_rollout(&mut self, r: &RolloutRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(ROLLOUTS).ctx("write rollout")?;
        table
            .insert(r.deployment.as_str(), encode(r).as_slice())
            .ctx("write rollout")?;
        Ok(())
    }

    pub fn remove_rollout(&mut self, deployment: &str) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(ROLLOUTS).ctx("remove rollout")?;
        let existed = table.remove(deployment).ctx("remove rollout")?.is_some();
        Ok(existed)
    }

    pub fn remove_deployment(&mut self, name: &str) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(DEPLOYMENTS).ctx("remove deployment")?;
        let existed = table.remove(name).ctx("remove deployment")?.is_some();
        Ok(existed)
    }

    pub fn manifest_metas(&self) -> Result<BTreeMap<String, ManifestMeta>, StoreError> {
        scan_map(
            &self.txn.open_table(MANIFESTS).ctx("read manifests")?,
            "manifests",
        )
    }

    pub fn manifest_meta(&self, id: &DeviceId) -> Result<Option<ManifestMeta>, StoreError> {
        let table = self.txn.open_table(MANIFESTS).ctx("read manifests")?;
        let v = table.get(id.as_str()).ctx("read manifest")?;
        v.map(|v| decode("manifests", id.as_str(), v.value()))
            .transpose()
    }

    /// Store many manifests with the tables opened once.
    pub fn put_manifests<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a DeviceId, &'a ManifestMeta, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let mut metas = self.txn.open_table(MANIFESTS).ctx("write manifest")?;
        let mut bytes = self.txn.open_table(MANIFEST_BYTES).ctx("write manifest")?;
        for (id, meta, sealed) in items {
            metas
                .insert(id.as_str(), encode(meta).as_slice())
                .ctx("write manifest")?;
            bytes.insert(id.as_str(), sealed).ctx("write manifest")?;
        }
        Ok(())
    }

    pub fn status(&self, id: &DeviceId) -> Result<Option<StatusRecord>, StoreError> {
        let table = self.txn.open_table(STATUS).ctx("read status")?;
        let v = table.get(id.as_str()).ctx("read status")?;
        v.map(|v| decode("status", id.as_str(), v.value()))
            .transpose()
    }

    pub fn put_status(&mut self, id: &DeviceId, s: &StatusRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(STATUS).ctx("write status")?;
        table
            .insert(id.as_str(), encode(s).as_slice())
            .ctx("write status")?;
        Ok(())
    }

    /// The delivery marks of `id` for `key` (fresh ones if none are stored or
    /// the stored ones belong to another key).
    pub fn marks(
        &self,
        id: &DeviceId,
        key: &outpost_protocol::PublicKey,
    ) -> Result<DeviceMarks, StoreError> {
        let table = self.txn.open_table(MARKS).ctx("read marks")?;
        let v = table.get(id.as_str()).ctx("read marks")?;
        let m = v
            .map(|v| decode::<DeviceMarks>("marks", id.as_str(), v.value()))
            .transpose()?;
        Ok(for_key(m, key))
    }

    pub fn put_marks(&mut self, id: &DeviceId, m: &DeviceMarks) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(MARKS).ctx("write marks")?;
        table
            .insert(id.as_str(), encode(m).as_slice())
            .ctx("write marks")?;
        Ok(())
    }

    /// Is the event `(id, seq)` stored?
    pub fn has_event(&self, id: &DeviceId, seq: u64) -> Result<bool, StoreError> {
        let table = self.txn.open_table(EVENTS).ctx("read event")?;
        let found = table.get((id.as_str(), seq)).ctx("read event")?.is_some();
        Ok(found)
    }

    /// Insert an event unless one with the same `(device, seq)` exists (QoS 1 may
    /// deliver twice). Returns whether it was new.
    pub fn insert_event(&mut self, id: &DeviceId, e: &EventRecord) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(EVENTS).ctx("write event")?;
        let key = (id.as_str(), e.event.seq);
        if table.get(key).ctx("read event")?.is_some() {
            return Ok(false);
        }
        table.insert(key, encode(e).as_slice()).ctx("write event")?;
        // Bounded history per device: drop what fell out of the window.
        if let Some(floor) = e.event.seq.checked_sub(EVENTS_KEPT_PER_DEVICE) {
            table
                .retain_in((id.as_str(), 0)..(id.as_str(), floor), |_, _| false)
                .ctx("prune events")?;
        }
        Ok(true)
    }

    pub fn add_counter(&mut self, name: &str, n: u64) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(COUNTERS).ctx("write counter")?;
        let old = table.get(name).ctx("read counter")?.map(|v| v.value());
        table
            .insert(name, old.unwrap_or(0).saturating_add(n))
            .ctx("write counter")?;
        Ok(())
    }

    pub fn append_audit(&mut self, mut entry: AuditEntry) -> Result<u64, StoreError> {
        let mut table = self.txn.open_table(AUDIT).ctx("append audit")?;
        let next = table
            .last()
            .ctx("read audit")?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(1);
        entry.seq = next;
        table
            .insert(next, encode(&entry).as_slice())
            .ctx("append audit")?;
        Ok(next)
    }

    pub fn device_count(&self) -> Result<u64, StoreError> {
        let table = self.txn.open_table(DEVICES).ctx("count devices")?;
        table.len().ctx("count devices")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{Event, EventKind};

    fn ev(seq: u64) -> EventRecord {
        EventRecord {
            received_at: 0,
            event: Event {
                device_id: "d".parse().unwrap(),
                seq,
                at: 0,
                dropped_before: 0,
                kind: EventKind::AppStopped { app: "a".into() },
            },
        }
    }

    #[test]
    fn events_dedupe_by_seq_and_old_ones_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("db")).unwrap();
        let id: DeviceId = "d".parse().unwrap();
        let other: DeviceId = "e".parse().unwrap();
        let new = store
            .write(|tx| {
                Ok::<_, StoreError>((
                    tx.insert_event(&id, &ev(1))?,
                    tx.insert_event(&id, &ev(1))?,
                    tx.insert_event(&other, &ev(1))?,
                ))
            })
            .unwrap();
        assert_eq!(new, (true, false, true));
        store
            .write(|tx| {
                tx.insert_event(&id, &ev(EVENTS_KEPT_PER_DEVICE + 5))
                    .map(|_| ())
            })
            .unwrap();
        let left = store.events(&id, 0, 100).unwrap();
        assert_eq!(left.len(), 1, "seq 1 fell out of the window");
        assert_eq!(
            store.events(&other, 0, 100).unwrap().len(),
            1,
            "other devices untouched"
        );
    }

    #[test]
    fn audit_is_append_only_and_newest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("db")).unwrap();
        for i in 0..3 {
            store
                .write(|tx| {
                    tx.append_audit(AuditEntry {
                        seq: 0,
                        at: i,
                        who: "t".into(),
                        action: "x".into(),
                        target: i.to_string(),
                        detail: serde_json::Value::Null,
                    })
                })
                .unwrap();
        }
        let a = store.audit(10).unwrap();
        assert_eq!(a.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 2, 1]);
        // A failed transaction leaves no trace.
        let r: Result<(), StoreError> = store.write(|tx| {
            tx.append_audit(AuditEntry {
                seq: 0,
                at: 9,
                who: "t".into(),
                action: "x".into(),
                target: "lost".into(),
                detail: serde_json::Value::Null,
            })?;
            Err(StoreError::Corrupt {
                table: "t",
                key: "k".into(),
                detail: "abort".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(store.audit(10).unwrap().len(), 3);
    }
}
