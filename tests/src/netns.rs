//! A device with its network down: the agent started in a fresh network
//! namespace with only loopback (no route, no DNS), and HTTP into that
//! namespace to reach the host-network apps it started there.

use crate::apps::http_get;

/// The command line the agent is appended to: a new network namespace,
/// loopback up, then exec (so the agent keeps the wrapper's pid).
pub const OFFLINE: &[&str] = &[
    "unshare",
    "--net",
    "--",
    "sh",
    "-c",
    "ip link set lo up && exec \"$0\" \"$@\"",
];

/// `GET path` on `port` from inside the network namespace of process `pid`.
pub fn http_get_in_netns(pid: u32, port: u16, path: &str) -> Option<String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
    let path = path.to_string();
    // setns changes only the calling thread's namespace.
    std::thread::spawn(move || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        http_get(port, &path)
    })
    .join()
    .ok()
    .flatten()
}
