//! Update locks: whether an app holds off the replacement of its container.
//!
//! The runtime mounts each app's lock directory (`<data>/locks/<app>` on the
//! host) read-write at `/run/outpost/lock` in every container of the app; an
//! app that must not be interrupted (a firmware flash, a long transaction)
//! flocks `updates.lock` there, exclusively. The agent probes the lock with a
//! non-blocking flock of the same file from the host: held means the release
//! waits (it still downloads). The probe takes the lock for an instant when it
//! is free, so an app should take it with a blocking flock (or retry).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use outpost_runtime::spec::LOCK_FILE;
use std::path::Path;

/// Does some process hold the update lock in `dir`? A missing file is a
/// free lock.
pub fn held(dir: &Path) -> std::io::Result<bool> {
    let path = dir.join(LOCK_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Dropping the guard unlocks at once.
        Ok(_free) => Ok(false),
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(std::io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_by_another_process_is_seen_and_its_release_too() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!held(dir.path()).unwrap(), "no file: free");
        let path = dir.path().join(LOCK_FILE);
        std::fs::write(&path, b"").unwrap();
        assert!(!held(dir.path()).unwrap(), "a file nobody locks: free");
        // Another process holds it, as an app inside a container would.
        // One process (each `exec` replaces the shell), so killing it is
        // the holder's end.
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 9>>'{}' && flock 9 && exec sleep 30",
                path.display()
            ))
            .spawn()
            .expect("sh and util-linux flock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !held(dir.path()).unwrap() {
            assert!(std::time::Instant::now() < deadline, "never saw the lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(!held(dir.path()).unwrap(), "released with its holder");
    }
}
