//! The agent's link against a "broker" that accepts the MQTT handshake and then
//! drops the connection at once: a tiny TCP server that answers every CONNECT
//! with a CONNACK and closes. The link's backoff must keep growing (it is reset
//! only after a connection stayed up, `link::STABLE_CONNECTION`) instead of
//! reconnecting every 0.25-0.5 s.
#![allow(clippy::unwrap_used)] // tests may unwrap

use outpost_edge_agent::config::BrokerAddr;
use outpost_edge_agent::link;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the link runs against the accept-then-drop broker.
const WINDOW: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_connacks_then_drops_is_not_hammered() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&attempts);
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Read the CONNECT (one read is enough for its few bytes), then
                // CONNACK "accepted, no session" and hang up.
                let mut buf = [0u8; 512];
                if sock.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = sock.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                }
                let _ = sock.shutdown().await;
            });
        }
    });

    let device = "pi-flap".parse().unwrap();
    let broker = BrokerAddr {
        host: "127.0.0.1".into(),
        port,
        tls: false,
    };
    let key = outpost_protocol::SigningKey::generate().unwrap();
    let (_client, driver) = link::connect(&device, &key, &broker, None, None).unwrap();
    let (in_tx, mut in_rx) = mpsc::unbounded_channel();
    let (ack_tx, _ack_rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(driver.run(in_tx, ack_tx, cancel.clone()));
    tokio::time::sleep(WINDOW).await;
    cancel.cancel();
    run.await.unwrap();
    server.abort();

    let mut connacks = 0;
    while let Ok(m) = in_rx.try_recv() {
        if matches!(m, link::Inbound::Connected { .. }) {
            connacks += 1;
        }
    }
    let n = attempts.load(Ordering::SeqCst);
    eprintln!(
        "measured: {n} connection attempts ({connacks} CONNACKs) in {WINDOW:?} against an accept-then-drop broker"
    );
    assert!(connacks >= 2, "the link never got through: {connacks}");
    // Backoff 0.5 s doubling, jitter in [d/2, d]: the waits before attempts
    // 2..=6 are at least 0.25 + 0.5 + 1 + 2 + 4 = 7.75 s, so at most 5 attempts
    // fit in 8 s (plus one for the race at the edge). Resetting the attempt on
    // every CONNACK made it 16-32.
    assert!(n <= 6, "{n} connection attempts in {WINDOW:?}");
}
