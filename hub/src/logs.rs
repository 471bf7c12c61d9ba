//! Logs on demand, the hub's side: which API requests wait for which device
//! stream ([`LogStreams`]; the ingest task delivers, the API's relay in
//! `api/logs.rs` opens and closes).
//!
//! Nothing is stored: chunks go from the ingest link to the waiting request
//! and on to the caller. The device streams only while a request lives: the
//! relay renews the device's deadline every [`RENEW_SECS`] while the caller
//! reads, and says stop when the caller goes away (or after
//! [`MAX_FOLLOW_SECS`]); if the hub itself goes away the device stops at the
//! last deadline (`outpost_protocol::logs`).

use outpost_protocol::{DeviceId, LogChunk};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// How far ahead each request's deadline is (the device stops by then).
pub const DEADLINE_SECS: u64 = 60;
/// How often a following relay renews the deadline.
pub const RENEW_SECS: u64 = 20;
/// Longest a `--follow` runs; the caller can ask again.
pub const MAX_FOLLOW_SECS: u64 = 3600;
/// Wait this long for the device's first chunk before saying it is not there.
pub const FIRST_CHUNK_SECS: u64 = 15;
/// Chunks buffered per stream before the relay drops (a slow reader).
const BUFFER: usize = 64;

/// Streams waiting for chunks, by request id.
#[derive(Debug, Default)]
pub struct LogStreams {
    waiting: Mutex<HashMap<u64, (DeviceId, mpsc::Sender<LogChunk>)>>,
    /// Chunks relayed / for no (or another device's) stream.
    pub relayed: AtomicU64,
    pub unexpected: AtomicU64,
}

impl LogStreams {
    /// A new stream for `device`: its request id and where chunks arrive.
    pub fn open(&self, device: DeviceId) -> (u64, mpsc::Receiver<LogChunk>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut w = match self.waiting.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let mut id = fastrand::u64(1..);
        while w.contains_key(&id) {
            id = fastrand::u64(1..);
        }
        w.insert(id, (device, tx));
        (id, rx)
    }

    pub fn close(&self, request_id: u64) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&request_id);
        }
    }

    /// A verified chunk from `device`: to its stream, if it is waiting and
    /// the stream is that device's.
    pub fn deliver(&self, device: &DeviceId, chunk: LogChunk) {
        let tx = match self.waiting.lock() {
            Ok(w) => w
                .get(&chunk.request_id)
                .filter(|(d, _)| d == device)
                .map(|(_, tx)| tx.clone()),
            Err(_) => None,
        };
        match tx {
            Some(tx) => {
                // A reader too slow for 64 chunks loses the newest: the
                // stream is for watching, not for keeping.
                if tx.try_send(chunk).is_ok() {
                    self.relayed.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.unexpected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(device_id = %device, request_id = chunk.request_id, "log chunk for no waiting stream dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(device: &str, request_id: u64) -> LogChunk {
        LogChunk {
            device_id: device.parse().unwrap(),
            request_id,
            seq: 0,
            data: b"x\n".to_vec(),
            dropped_bytes: 0,
            end: None,
        }
    }

    #[test]
    fn chunks_reach_only_the_stream_of_their_device() {
        let s = LogStreams::default();
        let a: DeviceId = "a".parse().unwrap();
        let b: DeviceId = "b".parse().unwrap();
        let (id, mut rx) = s.open(a.clone());
        // Device b cannot feed a's stream, even knowing its id.
        s.deliver(&b, chunk("b", id));
        assert!(rx.try_recv().is_err());
        s.deliver(&a, chunk("a", id));
        assert_eq!(rx.try_recv().unwrap().data, b"x\n");
        s.close(id);
        s.deliver(&a, chunk("a", id));
        assert_eq!(
            (
                s.relayed.load(Ordering::Relaxed),
                s.unexpected.load(Ordering::Relaxed)
            ),
            (1, 2)
        );
    }
}
