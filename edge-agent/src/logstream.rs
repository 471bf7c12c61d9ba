//! Logs on demand: the streams the hub asked for (`outpost_protocol::logs`).
//!
//! The inbox verifies each request (hub-signed, this device, deadline after
//! trusted time) and hands it here. A stream sends the app's last lines and,
//! when following, what it writes next, in chunks of at most 16 KiB, device
//! signed, QoS 0 on `topics::logs`: logs are for a person watching now, so a
//! chunk lost with the link is not worth a retry or a byte of flash. Each
//! stream ends by itself at its deadline (at most [`MAX_STREAM_SECS`] ahead;
//! the hub renews it while someone reads) or when the hub says stop, and
//! bytes beyond [`RATE_BYTES_PER_SEC`] are dropped and counted, so an app
//! printing in a loop cannot saturate a cellular link. What it did is in
//! [`LogCounters`] (status file, `outpost-agent status --json`).

use crate::logview::{self, Follower};
use outpost_protocol::logs::MAX_CHUNK_BYTES;
use outpost_protocol::{topics, DeviceId, LogChunk, LogRequest, SigningKey};
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a stream runs past its last request.
pub const MAX_STREAM_SECS: u64 = 120;
/// Streams at once; more are refused (with an end chunk saying so).
pub const MAX_STREAMS: usize = 4;
/// Sustained log bytes per second per stream; the burst is one second's worth.
pub const RATE_BYTES_PER_SEC: u64 = 64 * 1024;
/// How often a following stream looks for new output.
const POLL: Duration = Duration::from_millis(100);

/// What the streams did (one writer each: the manager and its streams).
#[derive(Debug, Default, Serialize)]
pub struct LogCounters {
    pub started: AtomicU64,
    pub active: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub dropped_bytes: AtomicU64,
    /// Requests that did not verify (forged, another device's, expired).
    pub refused: AtomicU64,
}

/// A token bucket over milliseconds. (Pure.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    per_sec: u64,
    tokens: u64,
    at_ms: u64,
}

impl RateLimit {
    pub fn new(per_sec: u64, now_ms: u64) -> RateLimit {
        RateLimit {
            per_sec,
            tokens: per_sec,
            at_ms: now_ms,
        }
    }

    /// How many of `want` bytes may go at `now_ms` (the rest is dropped).
    pub fn take(&mut self, now_ms: u64, want: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        let refill = elapsed.saturating_mul(self.per_sec) / 1000;
        self.tokens = self.tokens.saturating_add(refill).min(self.per_sec);
        let given = want.min(self.tokens);
        self.tokens -= given;
        given
    }
}

/// How long a stream may still run for a request with deadline `until`
/// (hub time) at trusted time `now`. (Pure.)
pub fn remaining(until: u64, now: u64) -> Duration {
    Duration::from_secs(until.saturating_sub(now).min(MAX_STREAM_SECS))
}

struct Stream {
    cancel: CancellationToken,
    deadline: watch::Sender<Instant>,
}

/// Runs the streams; fed verified requests by the inbox.
pub struct LogStreams {
    client: AsyncClient,
    device: DeviceId,
    key: Arc<SigningKey>,
    dir: PathBuf,
    counters: Arc<LogCounters>,
    streams: HashMap<u64, Stream>,
    done_tx: mpsc::UnboundedSender<u64>,
    done_rx: mpsc::UnboundedReceiver<u64>,
}

impl LogStreams {
    pub fn new(
        client: AsyncClient,
        device: DeviceId,
        key: Arc<SigningKey>,
        dir: PathBuf,
        counters: Arc<LogCounters>,
    ) -> LogStreams {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        LogStreams {
            client,
            device,
            key,
            dir,
            counters,
            streams: HashMap::new(),
            done_tx,
            done_rx,
        }
    }

    /// Serve requests until `cancel`; `now` gives trusted time (unix seconds).
    pub async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<(LogRequest, u64)>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(id) = self.done_rx.recv() => { self.streams.remove(&id); }
                r = requests.recv() => match r {
                    Some((req, now)) => self.handle(req, now, &cancel).await,
                    None => break,
                },
            }
        }
        for s in self.streams.values() {
            s.cancel.cancel();
        }
    }

    async fn handle(&mut self, req: LogRequest, now: u64, parent: &CancellationToken) {
        let device = self.device.clone();
        if req.stop {
            if let Some(s) = self.streams.remove(&req.request_id) {
                tracing::info!(device_id = %device, app = %req.app, request_id = req.request_id, "log stream stopped by the hub");
                s.cancel.cancel();
            }
            return;
        }
        let deadline = Instant::now() + remaining(req.until, now);
        if let Some(s) = self.streams.get(&req.request_id) {
            s.deadline.send_replace(deadline);
            return;
        }
        if self.streams.len() >= MAX_STREAMS {
            tracing::warn!(device_id = %device, app = %req.app, request_id = req.request_id, "log stream refused: {MAX_STREAMS} already running");
            let end = format!("refused: {MAX_STREAMS} log streams already running on {device}");
            let sender = self.sender(req.request_id);
            sender.end(end).await;
            return;
        }
        let cancel = parent.child_token();
        let (deadline_tx, deadline_rx) = watch::channel(deadline);
        self.streams.insert(
            req.request_id,
            Stream {
                cancel: cancel.clone(),
                deadline: deadline_tx,
            },
        );
        self.counters.started.fetch_add(1, Ordering::Relaxed);
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        tracing::info!(device_id = %device, app = %req.app, request_id = req.request_id, follow = req.follow, "log stream started");
        let sender = self.sender(req.request_id);
        let dir = self.dir.clone();
        let counters = self.counters.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let id = req.request_id;
            let why = stream(&sender, &dir, &req, deadline_rx, &cancel).await;
            tracing::info!(device_id = %sender.device, app = %req.app, request_id = id, reason = %why, "log stream ended");
            sender.end(why).await;
            counters.active.fetch_sub(1, Ordering::Relaxed);
            let _ = done.send(id);
        });
    }

    fn sender(&self, request_id: u64) -> ChunkSender {
        ChunkSender {
            client: self.client.clone(),
            device: self.device.clone(),
            key: self.key.clone(),
            counters: self.counters.clone(),
            request_id,
            seq: Arc::new(AtomicU64::new(0)),
            limit: Arc::new(std::sync::Mutex::new(RateLimit::new(RATE_BYTES_PER_SEC, 0))),
            dropped: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }
}

/// Seals and publishes one stream's chunks, under its rate limit.
struct ChunkSender {
    client: AsyncClient,
    device: DeviceId,
    key: Arc<SigningKey>,
    counters: Arc<LogCounters>,
    request_id: u64,
    seq: Arc<AtomicU64>,
    limit: Arc<std::sync::Mutex<RateLimit>>,
    /// Dropped since the last chunk sent.
    dropped: Arc<AtomicU64>,
    started: Instant,
}

impl ChunkSender {
    async fn publish(&self, data: Vec<u8>, end: Option<String>) {
        let chunk = LogChunk {
            device_id: self.device.clone(),
            request_id: self.request_id,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            dropped_bytes: self.dropped.swap(0, Ordering::Relaxed),
            data,
            end,
        };
        let n = chunk.data.len() as u64;
        let bytes = chunk.seal(&self.key);
        match self
            .client
            .publish(topics::logs(&self.device), QoS::AtMostOnce, false, bytes)
            .await
        {
            Ok(()) => {
                self.counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(device_id = %self.device, request_id = self.request_id, error = %e, "log chunk not queued");
            }
        }
    }

    /// Send `bytes` in chunks, dropping (and counting) what the rate limit
    /// does not allow.
    async fn data(&self, bytes: &[u8]) {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let allowed = match self.limit.lock() {
            Ok(mut l) => l.take(now_ms, bytes.len() as u64),
            Err(_) => 0,
        };
        let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
        let (send, drop) = bytes.split_at(allowed.min(bytes.len()));
        if !drop.is_empty() {
            self.dropped.fetch_add(drop.len() as u64, Ordering::Relaxed);
            self.counters
                .dropped_bytes
                .fetch_add(drop.len() as u64, Ordering::Relaxed);
        }
        for piece in send.chunks(MAX_CHUNK_BYTES) {
            self.publish(piece.to_vec(), None).await;
        }
    }

    async fn end(&self, why: String) {
        self.publish(Vec::new(), Some(why)).await;
    }
}

/// One stream: the tail, then (following) new output until the deadline or
/// a stop. Returns why it ended.
async fn stream(
    sender: &ChunkSender,
    dir: &std::path::Path,
    req: &LogRequest,
    mut deadline: watch::Receiver<Instant>,
    cancel: &CancellationToken,
) -> String {
    // The follower starts before the tail is read: nothing written in
    // between is lost (at worst a line shows twice).
    let mut follower = Follower::new(dir, &req.app);
    let all = match logview::read_all(dir, &req.app) {
        Ok(b) => b,
        Err(e) => return e.to_string(),
    };
    let lines = req.tail.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    sender.data(logview::tail(&all, lines)).await;
    if !req.follow {
        return "done".into();
    }
    loop {
        let until = *deadline.borrow_and_update();
        tokio::select! {
            _ = cancel.cancelled() => return "stopped".into(),
            _ = tokio::time::sleep_until(until) => {
                // Renewed meanwhile? Then keep going.
                if *deadline.borrow() <= Instant::now() {
                    return "deadline".into();
                }
            }
            _ = tokio::time::sleep(POLL) => {
                match follower.poll() {
                    Ok(bytes) if !bytes.is_empty() => sender.data(&bytes).await,
                    Ok(_) => {}
                    Err(e) => return e.to_string(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_refill() {
        let mut l = RateLimit::new(1000, 0);
        assert_eq!(l.take(0, 600), 600);
        assert_eq!(l.take(0, 600), 400, "the burst is one second's worth");
        assert_eq!(l.take(100, 600), 100, "100 ms refill 100 bytes");
        assert_eq!(l.take(5_000, 10), 10);
        assert_eq!(l.take(5_000, 5_000), 990, "capped at one second's worth");
        // A clock that goes back refills nothing.
        assert_eq!(l.take(1_000, 10), 0);
    }

    #[test]
    fn a_stream_runs_at_most_two_minutes_past_its_request() {
        assert_eq!(remaining(1_100, 1_000), Duration::from_secs(100));
        assert_eq!(
            remaining(10_000, 1_000),
            Duration::from_secs(MAX_STREAM_SECS)
        );
        assert_eq!(remaining(900, 1_000), Duration::ZERO);
    }
}
