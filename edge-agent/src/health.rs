//! Readiness of apps from their health checks (exec, HTTP or TCP probes).
//!
//! A probe failing `retries` times in a row makes the app not ready; one success
//! makes it ready. The verdict goes into the status (`AppStatus::ready`), an
//! `AppHealth` event on each change, and the [`Verdicts`] the reconciler reads:
//! the planner's ready set for hand-over updates, and liveness.
//!
//! Readiness belongs to one container: a verdict names the container and pid
//! it is about, and a new container (a restart, an update) starts not ready
//! and not "ever ready", whatever its predecessor was. When an app's container
//! stops or is replaced, a ready app turns not ready (an `AppHealth` event).
//!
//! This task only judges; it never stops or restarts anything. Liveness (an app
//! that was ready and then fails `retries` probes in a row is restarted) is the
//! reconciler's decision, made purely in `reconcile/liveness.rs` from these
//! verdicts and carried out through the same stop/exit/backoff path as a crash.
//!
//! This task is the only writer of readiness: its last verdict per app is the
//! [`Readiness`] part of the view (see [`crate::view`]).
//!
//! TCP and HTTP probes connect to 127.0.0.1: the host's for host-network apps,
//! the container's own loopback for isolated ones (the socket is created in the
//! container's network namespace); exec probes run inside the container's
//! namespaces via `nsenter`.

use crate::outbox::Outbox;
use crate::view::{Readiness, Writer};
use outpost_protocol::{EventKind, HealthCheck, Probe};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One running app with a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTarget {
    pub container: String,
    pub pid: u32,
    pub check: HealthCheck,
    /// The app has its own network namespace (`network = "isolated"`).
    pub isolated: bool,
}

/// Did the probe succeed? Errors are failures (with the reason for the log).
pub async fn probe(target: &HealthTarget) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(target.check.timeout_secs.max(1)));
    let fut = async {
        match &target.check.probe {
            Probe::Tcp { port } => connect(target, *port, timeout).await.map(|_| ()),
            Probe::Http { port, path } => {
                http_probe(connect(target, *port, timeout).await?, path).await
            }
            Probe::Exec { command } => exec_probe(target.pid, command).await,
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("probe timed out after {}s", timeout.as_secs()))?
}

/// Connect to `port` on the app's loopback.
async fn connect(target: &HealthTarget, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let fail = |e: &dyn std::fmt::Display| format!("tcp 127.0.0.1:{port}: {e}");
    if !target.isolated {
        return TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| fail(&e));
    }
    // A socket belongs to the network namespace it was created in, so create
    // and connect it on a thread of its own that entered the container's
    // namespace (never a pool thread: the switch is for the thread's lifetime),
    // then use it from here like any other.
    let pid = target.pid;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("outpost-probe".into())
        .spawn(move || {
            let r = (|| {
                let path = format!("/proc/{pid}/ns/net");
                let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering {path}: {e}"))?;
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| fail(&e))?;
    let stream = rx.await.map_err(|e| fail(&e))?.map_err(|e| fail(&e))?;
    stream.set_nonblocking(true).map_err(|e| fail(&e))?;
    TcpStream::from_std(stream).map_err(|e| fail(&e))
}

async fn http_probe(mut s: TcpStream, path: &str) -> Result<(), String> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("http write: {e}"))?;
    let mut buf = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        let r = s
            .read(&mut buf[n..])
            .await
            .map_err(|e| format!("http read: {e}"))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("http: not an HTTP response: {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("http {path}: status {code}"))
    }
}

async fn exec_probe(pid: u32, command: &[String]) -> Result<(), String> {
    let status = tokio::process::Command::new("nsenter")
        .arg("--target")
        .arg(pid.to_string())
        .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
        .args(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("exec probe: running nsenter: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exec probe {command:?}: {status}"))
    }
}

/// The task's judgement of one app's current container, for the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The container and pid this is about: a verdict never carries over to
    /// another container of the same app.
    pub container: String,
    pub pid: u32,
    /// `None` until judged (one passing probe, or `retries` failing ones).
    pub ready: Option<bool>,
    /// This container passed its check at least once.
    pub was_ready: bool,
    /// While not ready: failed probes in a row when it turned not ready (the
    /// check's `retries`) and the last one's reason. Not updated by later
    /// failures, so a failing app does not wake the reconciler at every probe.
    pub failure: Option<(u32, String)>,
}

/// Every probed app's verdict, by app name.
pub type Verdicts = BTreeMap<String, Verdict>;

#[derive(Debug, Default)]
struct Track {
    next_at: Option<Instant>,
    failures: u32,
    ready: Option<bool>,
    was_ready: bool,
    failure: Option<(u32, String)>,
}

/// Probe every target on its own interval until cancelled.
pub async fn run(
    mut targets: watch::Receiver<BTreeMap<String, HealthTarget>>,
    readiness: Writer<Readiness>,
    outbox: Outbox,
    verdicts_tx: watch::Sender<Verdicts>,
    cancel: CancellationToken,
) {
    let mut tracks: BTreeMap<String, (HealthTarget, Track)> = BTreeMap::new();
    loop {
        let current = targets.borrow_and_update().clone();
        // A track is one container's: a stopped or replaced container takes
        // its readiness with it.
        let mut gone = vec![];
        tracks.retain(|app, (t, track)| {
            let keep = current.get(app) == Some(t);
            if !keep && track.ready == Some(true) {
                gone.push(app.clone());
            }
            keep
        });
        for app in gone {
            set_ready(&readiness, &outbox, &app, false).await;
        }
        for (app, t) in current {
            tracks.entry(app).or_insert_with(|| (t, Track::default()));
        }
        let now = Instant::now();
        for (app, (target, track)) in tracks.iter_mut() {
            if track.next_at.is_some_and(|at| at > now) {
                continue;
            }
            let interval = Duration::from_secs(u64::from(target.check.interval_secs.max(1)));
            track.next_at = Some(now + interval);
            let result = probe(target).await;
            let was = track.ready;
            match result {
                Ok(()) => {
                    track.failures = 0;
                    track.ready = Some(true);
                    track.was_ready = true;
                    track.failure = None;
                }
                Err(why) => {
                    track.failures += 1;
                    tracing::debug!(device_id = %outbox.device_id(), app = %app, failures = track.failures, reason = %why, "health probe failed");
                    if track.failures >= target.check.retries.max(1) && track.ready != Some(false) {
                        track.ready = Some(false);
                        track.failure = Some((track.failures, why));
                    }
                }
            }
            if track.ready != was {
                if let Some(ready) = track.ready {
                    set_ready(&readiness, &outbox, app, ready).await;
                }
            }
        }
        let verdicts: Verdicts = tracks
            .iter()
            .map(|(app, (t, track))| {
                (
                    app.clone(),
                    Verdict {
                        container: t.container.clone(),
                        pid: t.pid,
                        ready: track.ready,
                        was_ready: track.was_ready,
                        failure: track.failure.clone(),
                    },
                )
            })
            .collect();
        verdicts_tx.send_if_modified(|v| {
            let changed = *v != verdicts;
            *v = verdicts;
            changed
        });
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = targets.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Record `app`'s readiness: when it differs from what the view shows, the
/// view's part, the log and an event (a replaced container that was not ready
/// either is not a change).
async fn set_ready(readiness: &Writer<Readiness>, outbox: &Outbox, app: &str, ready: bool) {
    if readiness.borrow().get(app) == Some(&ready) {
        return;
    }
    tracing::info!(device_id = %outbox.device_id(), app = %app, ready, "app health changed");
    readiness.send_modify(|v| {
        v.insert(app.to_string(), ready);
    });
    outbox
        .event(EventKind::AppHealth {
            app: app.to_string(),
            ready,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(probe: Probe) -> HealthTarget {
        HealthTarget {
            container: "c".into(),
            pid: std::process::id(),
            check: HealthCheck {
                probe,
                interval_secs: 1,
                timeout_secs: 2,
                retries: 1,
            },
            isolated: false,
        }
    }

    /// Exec probes run through nsenter into the target's namespaces (here this
    /// test's own, which root may enter too); the exit status is the verdict.
    #[tokio::test]
    async fn exec_probes_report_the_commands_exit_status() {
        probe(&target(Probe::Exec {
            command: vec!["true".into()],
        }))
        .await
        .unwrap();
        let err = probe(&target(Probe::Exec {
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
        }))
        .await
        .unwrap_err();
        assert!(err.contains("exit status: 3"), "{err}");
        let mut slow = target(Probe::Exec {
            command: vec!["sleep".into(), "30".into()],
        });
        slow.check.timeout_secs = 1;
        let err = probe(&slow).await.unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }

    /// An isolated app's port lives on its own loopback: probing the host's
    /// would fail (or hit some other service). Needs root, like the other
    /// container tests: a process in a new network namespace with a listener.
    #[tokio::test]
    async fn isolated_apps_are_probed_on_their_own_loopback() {
        use std::os::unix::process::CommandExt;
        // busybox nc serves one connection at a time, so loop; the port is free
        // on the host's loopback.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("unshare")
            .args(["--net", "sh", "-c"])
            .arg(format!(
                "busybox ip link set lo up && while true; do busybox nc -l -p {port} </dev/null; done"
            ))
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut t = target(Probe::Tcp { port });
        t.pid = pid;
        t.isolated = true;
        let mut ok = Err(String::new());
        for _ in 0..100 {
            ok = probe(&t).await;
            if ok.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ok.unwrap();
        // The same port on the host's loopback: nothing there.
        t.isolated = false;
        assert!(probe(&t).await.is_err());
        // The shell and its nc: the whole process group.
        let _ = std::process::Command::new("kill")
            .args(["-9", "--", &format!("-{pid}")])
            .status();
        let _ = child.wait();
    }

    use std::collections::BTreeSet;

    /// The health task is the writer of readiness: its verdicts reach the
    /// view's part and the planner's ready set, each change an event.
    #[tokio::test]
    async fn verdicts_go_to_the_readiness_part_the_ready_set_and_the_outbox() {
        use crate::state::Store;
        use crate::view::{parts, Rejections};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let key = std::sync::Arc::new(outpost_protocol::SigningKey::generate().unwrap());
        let outbox = Outbox::new("pi-1".parse().unwrap(), key, store.clone(), 100);
        let (w, _parts) = parts(None, Rejections::default());
        let mut verdicts = w.readiness.subscribe();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (targets_tx, targets_rx) = watch::channel(BTreeMap::new());
        let (ready_tx, mut ready_rx) = watch::channel(Verdicts::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            targets_rx,
            w.readiness,
            outbox.clone(),
            ready_tx,
            cancel.clone(),
        ));
        let ready_set = |v: &Verdicts| -> BTreeSet<String> {
            v.iter()
                .filter(|(_, v)| v.ready == Some(true))
                .map(|(a, _)| a.clone())
                .collect()
        };
        targets_tx.send_replace([("web".to_string(), target(Probe::Tcp { port }))].into());
        tokio::time::timeout(
            Duration::from_secs(10),
            verdicts.wait_for(|v| !v.is_empty()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            *verdicts.borrow(),
            BTreeMap::from([("web".to_string(), true)])
        );
        tokio::time::timeout(
            Duration::from_secs(10),
            ready_rx.wait_for(|r| !ready_set(r).is_empty()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            ready_set(&ready_rx.borrow()),
            BTreeSet::from(["web".to_string()])
        );
        assert_eq!(outbox.pending().unwrap(), 1, "one AppHealth event");
        let first = ready_rx.borrow()["web"].clone();
        assert!(first.was_ready && first.failure.is_none(), "{first:?}");

        // The app's container is replaced by one whose probe fails: readiness
        // is per container, so the app is not ready at once (an event), and
        // the new container's verdict does not inherit "was ready".
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut next = target(Probe::Tcp { port: free });
        next.container = "c2".into();
        targets_tx.send_replace([("web".to_string(), next)].into());
        tokio::time::timeout(
            Duration::from_secs(10),
            verdicts.wait_for(|v| v.get("web") == Some(&false)),
        )
        .await
        .unwrap()
        .unwrap();
        let judged = tokio::time::timeout(
            Duration::from_secs(10),
            ready_rx.wait_for(|r| r.get("web").is_some_and(|v| v.ready == Some(false))),
        )
        .await
        .unwrap()
        .unwrap()["web"]
            .clone();
        assert_eq!(judged.container, "c2");
        assert!(!judged.was_ready, "inherited readiness: {judged:?}");
        let (failures, reason) = judged.failure.clone().unwrap();
        assert_eq!(failures, 1, "retries = 1");
        assert!(reason.contains(&format!("127.0.0.1:{free}")), "{reason}");
        assert_eq!(
            outbox.pending().unwrap(),
            2,
            "the AppHealth event of the change"
        );
        cancel.cancel();
        task.await.unwrap();
        drop(listener);
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.starts_with("GET /ok ") {
                    "HTTP/1.0 200 OK\r\n\r\n"
                } else {
                    "HTTP/1.0 503 Nope\r\n\r\n"
                };
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        probe(&target(Probe::Tcp { port })).await.unwrap();
        probe(&target(Probe::Http {
            port,
            path: "/ok".into(),
        }))
        .await
        .unwrap();
        let err = probe(&target(Probe::Http {
            port,
            path: "/bad".into(),
        }))
        .await
        .unwrap_err();
        assert!(err.contains("503"), "{err}");
        // A port nobody listens on (bind then drop to get a free one).
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(probe(&target(Probe::Tcp { port: free })).await.is_err());
    }
}
