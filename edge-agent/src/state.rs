//! The agent's durable state in one redb file: the accepted manifest bytes with the
//! verifier's trust state, rejection counters, restart counters, the boot counter and
//! the bounded outbox of device-signed events.
//!
//! Anything the agent acts on is committed with `Durability::Immediate` first (an
//! acknowledged manifest survives a power cut). Outbox entries are deleted only
//! when the hub's signed event watermark covers them (not on the broker's PUBACK:
//! a broker without persistence can lose what it acknowledged), and that delete
//! uses `Durability::None`: losing it only re-sends events the hub deduplicates
//! by `seq`, and it saves an fsync per watermark on an SD card.

use outpost_protocol::{PublicKey, RejectCounters, TrustState};
use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Event seq -> sealed event bytes.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// The trust state in format version 3's layout (time floor, root version).
const K_TRUST: &str = "trust.v3";
/// The trust state as agents before format version 3 wrote it: read once at
/// start (`legacy::decode_trust_state_v2`), removed at the next save.
const K_TRUST_V2: &str = "trust";
const K_MANIFEST: &str = "manifest";
/// The public key that verified the accepted manifest when it was accepted (see
/// `TrustGate::persisted_manifest`). Absent in databases written before it.
const K_MANIFEST_KEY: &str = "manifest_key";
const K_REJECTED: &str = "rejected.v3";
/// Reject counters before format version 3 (no `expired`); as `K_TRUST_V2`.
const K_REJECTED_V2: &str = "rejected";
const K_LAST_REJECTION: &str = "last_rejection";
const K_EVENT_SEQ: &str = "event_seq";
const K_DROPPED: &str = "dropped";
const K_BOOTS: &str = "boots";
const K_RESTARTS: &str = "restarts";
/// The release record (`reconcile/release.rs`), as JSON: it holds a whole
/// manifest, and JSON reads a record written before a field was added.
const K_RELEASE: &str = "release";
/// Page cache for the state database (see `Store::open`).
const CACHE_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("state database {path} is in use by another process (is the agent running?)")]
    Locked { path: PathBuf },
    #[error("state database {path}: stored {what} is corrupt: {detail}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("creating state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything loaded at start.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub trust: Option<TrustState>,
    pub manifest: Option<Vec<u8>>,
    /// The key that verified `manifest` when it was accepted.
    pub manifest_key: Option<PublicKey>,
    pub rejected: RejectCounters,
    pub last_rejection: Option<String>,
    pub event_seq: u64,
    pub dropped: u64,
    pub restarts: BTreeMap<String, u32>,
    pub outbox_len: u64,
    /// The release record's bytes (JSON), decoded by the reconciler.
    pub release: Option<Vec<u8>>,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard into a Vec fails only for types serde cannot represent; ours can.
    postcard::to_stdvec(v).unwrap_or_default()
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // redb's default page cache is 1 GiB; the agent's state (one manifest,
        // a bounded outbox) is a few hundred KiB, and its RSS is a budget.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StateError::Locked {
                    path: path.to_path_buf(),
                },
                other => StateError::Db {
                    path: path.to_path_buf(),
                    source: Box::new(other.into()),
                },
            })?;
        Store::with_tables(db, path.to_path_buf())
    }

    /// A store in memory only (redb's in-memory backend): nothing survives the
    /// process. For the fleet simulator (`sim/src/device.rs`), which runs the
    /// agent's trust gate and outbox for thousands of devices in one process: a
    /// file each would cost a file descriptor per device next to its socket,
    /// and an fsync per commit on one disk that no real device shares.
    pub fn open_in_memory() -> Result<Store, StateError> {
        let path = PathBuf::from("(in memory)");
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StateError::Db {
                path: path.clone(),
                source: Box::new(e.into()),
            })?;
        Store::with_tables(db, path)
    }

    /// Wrap an opened database and make sure every table exists.
    fn with_tables(db: Database, path: PathBuf) -> Result<Store, StateError> {
        let store = Store { db, path };
        store.write(Durability::Immediate, |tx| {
            tx.open_table(META)?;
            tx.open_table(OUTBOX)?;
            Ok(())
        })?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> StateError {
        StateError::Db {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn write<R>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, StateError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(durability).map_err(|e| self.err(e))?;
        let r = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(r)
    }

    fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(META).map_err(|e| self.err(e))?;
        let v = t.get(key).map_err(|e| self.err(e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// A value stored under an older layout, decoded by `decode`.
    fn get_legacy<T>(
        &self,
        key: &str,
        what: &'static str,
        decode: impl Fn(&[u8]) -> Result<T, outpost_protocol::OpenError>,
    ) -> Result<Option<T>, StateError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                what,
                detail: e.to_string(),
            }),
        }
    }

    fn get<T: DeserializeOwned>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<T>, StateError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(bytes) => {
                postcard::from_bytes(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path: self.path.clone(),
                        what,
                        detail: e.to_string(),
                    })
            }
        }
    }

    pub fn load(&self) -> Result<Loaded, StateError> {
        let outbox_len = {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
            t.len().map_err(|e| self.err(e))?
        };
        Ok(Loaded {
            trust: match self.get(K_TRUST, "trust state")? {
                Some(t) => Some(t),
                None => self.get_legacy(K_TRUST_V2, "trust state (format version 2)", |b| {
                    outpost_protocol::verify::decode_trust_state_v2(b)
                })?,
            },
            manifest: self.get_raw(K_MANIFEST)?,
            manifest_key: self.get(K_MANIFEST_KEY, "manifest key")?,
            rejected: match self.get(K_REJECTED, "reject counters")? {
                Some(c) => c,
                None => self
                    .get_legacy(K_REJECTED_V2, "reject counters (format version 2)", |b| {
                        outpost_protocol::legacy::decode_counters_v2(b)
                    })?
                    .unwrap_or_default(),
            },
            last_rejection: self.get(K_LAST_REJECTION, "last rejection")?,
            event_seq: self.get(K_EVENT_SEQ, "event seq")?.unwrap_or(0),
            dropped: self.get(K_DROPPED, "dropped count")?.unwrap_or(0),
            restarts: self
                .get(K_RESTARTS, "restart counters")?
                .unwrap_or_default(),
            outbox_len,
            release: self.get_raw(K_RELEASE)?,
        })
    }

    /// Count this start; the result makes status sequence numbers monotonic across
    /// restarts without persisting every status.
    pub fn bump_boots(&self) -> Result<u64, StateError> {
        let boots: u64 = self.get(K_BOOTS, "boot counter")?.unwrap_or(0) + 1;
        self.write(Durability::Immediate, |tx| {
            tx.open_table(META)?
                .insert(K_BOOTS, enc(&boots).as_slice())?;
            Ok(())
        })?;
        Ok(boots)
    }

    /// Persist trust state alone (first provisioning, key set adoption).
    pub fn save_trust(&self, trust: &TrustState) -> Result<(), StateError> {
        self.write(Durability::Immediate, |tx| {
            let mut t = tx.open_table(META)?;
            t.insert(K_TRUST, enc(trust).as_slice())?;
            t.remove(K_TRUST_V2)?;
            Ok(())
        })
    }

    /// The accepted manifest bytes and the trust state that records it, in ONE
    /// durable transaction: after a crash either both or neither are on disk.
    pub fn save_accepted(
        &self,
        trust: &TrustState,
        manifest: &[u8],
        key: &PublicKey,
    ) -> Result<(), StateError> {
        self.write(Durability::Immediate, |tx| {
            let mut t = tx.open_table(META)?;
            t.insert(K_TRUST, enc(trust).as_slice())?;
            t.remove(K_TRUST_V2)?;
            t.insert(K_MANIFEST, manifest)?;
            t.insert(K_MANIFEST_KEY, enc(key).as_slice())?;
            Ok(())
        })
    }

    pub fn save_rejection(
        &self,
        counters: &RejectCounters,
        reason: &str,
    ) -> Result<(), StateError> {
        self.write(Durability::Immediate, |tx| {
            let mut t = tx.open_table(META)?;
            t.insert(K_REJECTED, enc(counters).as_slice())?;
            t.remove(K_REJECTED_V2)?;
            t.insert(K_LAST_REJECTION, enc(&reason.to_string()).as_slice())?;
            Ok(())
        })
    }

    pub fn save_restarts(&self, restarts: &BTreeMap<String, u32>) -> Result<(), StateError> {
        self.write(Durability::Immediate, |tx| {
            tx.open_table(META)?
                .insert(K_RESTARTS, enc(restarts).as_slice())?;
            Ok(())
        })
    }

    pub fn save_release(&self, record: &[u8]) -> Result<(), StateError> {
        self.write(Durability::Immediate, |tx| {
            tx.open_table(META)?.insert(K_RELEASE, record)?;
            Ok(())
        })
    }

    /// Append an event to the outbox under the next seq, dropping the oldest
    /// entries when over `limit`. `seal(seq, dropped_total)` produces the bytes.
    /// Returns the seq used.
    pub fn push_event(
        &self,
        limit: u64,
        seal: impl FnOnce(u64, u64) -> Vec<u8>,
    ) -> Result<u64, StateError> {
        let seq: u64 = self.get(K_EVENT_SEQ, "event seq")?.unwrap_or(0) + 1;
        let mut dropped: u64 = self.get(K_DROPPED, "dropped count")?.unwrap_or(0);
        let mut t_len = {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
            t.len().map_err(|e| self.err(e))?
        };
        let mut dropping = 0;
        while t_len >= limit.max(1) {
            dropping += 1;
            t_len -= 1;
        }
        dropped += dropping;
        let bytes = seal(seq, dropped);
        self.write(Durability::Immediate, |tx| {
            let mut ob = tx.open_table(OUTBOX)?;
            for _ in 0..dropping {
                ob.pop_first()?;
            }
            ob.insert(seq, bytes.as_slice())?;
            drop(ob);
            let mut meta = tx.open_table(META)?;
            meta.insert(K_EVENT_SEQ, enc(&seq).as_slice())?;
            meta.insert(K_DROPPED, enc(&dropped).as_slice())?;
            Ok(())
        })?;
        Ok(seq)
    }

    /// The oldest outbox entry with seq greater than `after`.
    pub fn outbox_next(&self, after: u64) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
        let mut range = t
            .range((after.saturating_add(1))..)
            .map_err(|e| self.err(e))?;
        match range.next() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r.map_err(|e| self.err(e))?;
                Ok(Some((k.value(), v.value().to_vec())))
            }
        }
    }

    /// Delete every entry the hub acknowledged (`seq <= acked`, from its signed
    /// watermark). Returns how many were deleted.
    pub fn outbox_ack_through(&self, acked: u64) -> Result<u64, StateError> {
        self.write(Durability::None, |tx| {
            let mut t = tx.open_table(OUTBOX)?;
            let mut n = 0;
            t.retain_in(..=acked, |_, _| {
                n += 1;
                false
            })?;
            Ok(n)
        })
    }

    /// The seq below which this device will never send an event again (they were
    /// acknowledged or dropped by the bound): the oldest outbox entry, or the
    /// next seq when the outbox is empty. Reported in every status.
    pub fn event_floor(&self) -> Result<u64, StateError> {
        match self.outbox_next(0)? {
            Some((seq, _)) => Ok(seq),
            None => Ok(self
                .get::<u64>(K_EVENT_SEQ, "event seq")?
                .unwrap_or(0)
                .saturating_add(1)),
        }
    }

    pub fn outbox_len(&self) -> Result<u64, StateError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
        t.len().map_err(|e| self.err(e))
    }
}

/// The reconciler's one record in the store: its per-app restart counters
/// (loaded at start with [`Store::load`]). A handle that can write nothing
/// else.
#[derive(Debug, Clone)]
pub struct RestartLog(Arc<Store>);

impl RestartLog {
    pub fn new(store: Arc<Store>) -> RestartLog {
        RestartLog(store)
    }

    /// Persist the counters (blocking: fsync).
    pub fn save(&self, restarts: &BTreeMap<String, u32>) -> Result<(), StateError> {
        self.0.save_restarts(restarts)
    }
}

/// The reconciler's release record in the store (loaded at start with
/// [`Store::load`]). A handle that can write nothing else.
#[derive(Debug, Clone)]
pub struct ReleaseLog(Arc<Store>);

impl ReleaseLog {
    pub fn new(store: Arc<Store>) -> ReleaseLog {
        ReleaseLog(store)
    }

    /// Persist the record durably (blocking: fsync): a transition must be on
    /// disk before the containers it announces change.
    pub fn save(&self, record: &[u8]) -> Result<(), StateError> {
        self.0.save_release(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::{KeySet, SigningKey};

    fn trust() -> TrustState {
        let root = SigningKey::generate().unwrap();
        TrustState {
            root: root.public_key(),
            keyset: KeySet {
                version: 1,
                issued_at: 0,
                keys: vec![root.public_key()],
                expires_at: outpost_protocol::NEVER,
                root_version: 1,
            },
            last: None,
            time_floor: 7,
            root_version: 1,
        }
    }

    /// A state database written by an agent before format version 3 opens:
    /// its trust state and counters are read in their old layout and written
    /// back in the new one at the next save.
    #[test]
    fn trust_and_counters_of_format_version_2_are_read_and_migrated() {
        #[derive(Serialize)]
        struct OldKeySet {
            version: u64,
            issued_at: u64,
            keys: Vec<PublicKey>,
        }
        #[derive(Serialize)]
        struct OldTrust {
            root: PublicKey,
            keyset: OldKeySet,
            last: Option<outpost_protocol::LastAccepted>,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let root = SigningKey::generate().unwrap();
        let old = OldTrust {
            root: root.public_key(),
            keyset: OldKeySet {
                version: 3,
                issued_at: 9,
                keys: vec![root.public_key()],
            },
            last: Some(outpost_protocol::LastAccepted {
                epoch: 3,
                generation: 8,
                body_digest: outpost_protocol::Digest::of(b"m"),
            }),
        };
        let s = Store::open(&path).unwrap();
        s.write(Durability::Immediate, |tx| {
            let mut t = tx.open_table(META)?;
            t.insert(K_TRUST_V2, enc(&old).as_slice())?;
            t.insert(
                K_REJECTED_V2,
                enc(&[0u64, 4, 0, 0, 0, 0, 0, 0, 0, 1]).as_slice(),
            )?;
            Ok(())
        })
        .unwrap();
        let l = s.load().unwrap();
        let t = l.trust.expect("the old trust state is read");
        assert_eq!((t.keyset.version, t.time_floor, t.root_version), (3, 0, 1));
        assert_eq!(t.last.map(|l| l.generation), Some(8));
        assert_eq!((l.rejected.malformed, l.rejected.keyset), (4, 1));
        s.save_trust(&t).unwrap();
        assert!(
            s.get_raw(K_TRUST_V2).unwrap().is_none(),
            "old layout removed"
        );
        drop(s);
        let again = Store::open(&path).unwrap().load().unwrap();
        assert_eq!(again.trust, Some(t));
    }

    #[test]
    fn accepted_manifest_and_trust_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let t = trust();
        {
            let s = Store::open(&path).unwrap();
            s.save_accepted(&t, b"manifest-bytes", &t.root).unwrap();
            assert_eq!(s.bump_boots().unwrap(), 1);
        }
        let s = Store::open(&path).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.manifest_key, Some(t.root));
        assert_eq!(l.trust, Some(t));
        assert_eq!(l.manifest.as_deref(), Some(&b"manifest-bytes"[..]));
        assert_eq!(s.bump_boots().unwrap(), 2);
    }

    #[test]
    fn the_restart_log_writes_the_counters_load_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let counters: BTreeMap<String, u32> = [("web".to_string(), 3)].into();
        RestartLog::new(s.clone()).save(&counters).unwrap();
        assert_eq!(s.load().unwrap().restarts, counters);
    }

    #[test]
    fn the_release_log_writes_the_record_load_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        assert_eq!(s.load().unwrap().release, None);
        ReleaseLog::new(s.clone())
            .save(b"{\"trial\":[1,2]}")
            .unwrap();
        assert_eq!(
            s.load().unwrap().release.as_deref(),
            Some(&b"{\"trial\":[1,2]}"[..])
        );
    }

    #[test]
    fn a_second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _s = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(StateError::Locked { .. })));
    }

    #[test]
    fn outbox_is_ordered_bounded_and_counts_drops() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let mut seen_dropped = vec![];
        for i in 0..5u8 {
            s.push_event(3, |seq, dropped| {
                seen_dropped.push(dropped);
                vec![i, seq as u8]
            })
            .unwrap();
        }
        assert_eq!(seen_dropped, vec![0, 0, 0, 1, 2]);
        assert_eq!(s.outbox_len().unwrap(), 3);
        let (seq, bytes) = s.outbox_next(0).unwrap().unwrap();
        assert_eq!((seq, bytes), (3, vec![2, 3]));
        assert_eq!(s.event_floor().unwrap(), 3);
        // A watermark below the oldest entry deletes nothing; one at 3 deletes 3.
        assert_eq!(s.outbox_ack_through(2).unwrap(), 0);
        assert_eq!(s.outbox_ack_through(3).unwrap(), 1);
        assert_eq!(s.outbox_next(0).unwrap().unwrap().0, 4);
        assert_eq!(s.outbox_next(4).unwrap().unwrap().0, 5);
        assert_eq!(s.outbox_next(5).unwrap(), None);
        drop(s);
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let l = s.load().unwrap();
        assert_eq!((l.event_seq, l.dropped, l.outbox_len), (5, 2, 2));
        assert_eq!(s.outbox_ack_through(9).unwrap(), 2);
        assert_eq!(s.event_floor().unwrap(), 6, "empty: the next seq");
    }

    #[test]
    fn an_in_memory_store_keeps_state_and_outbox_like_a_file() {
        let s = Store::open_in_memory().unwrap();
        let t = trust();
        s.save_accepted(&t, b"m", &t.root).unwrap();
        for i in 0..3u8 {
            s.push_event(2, |seq, dropped| vec![i, seq as u8, dropped as u8])
                .unwrap();
        }
        let l = s.load().unwrap();
        assert_eq!(l.trust, Some(t));
        assert_eq!(l.manifest.as_deref(), Some(&b"m"[..]));
        assert_eq!((l.event_seq, l.dropped, l.outbox_len), (3, 1, 2));
        assert_eq!(s.outbox_next(0).unwrap(), Some((2, vec![1, 2, 0])));
        assert_eq!(s.outbox_ack_through(2).unwrap(), 1);
        assert_eq!(s.event_floor().unwrap(), 3);
        // Each store is its own database.
        assert_eq!(
            Store::open_in_memory().unwrap().load().unwrap().event_seq,
            0
        );
    }
}
