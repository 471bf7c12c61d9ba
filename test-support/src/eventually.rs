//! The one polling helper: look at the world until what a test waits for has
//! happened, instead of sleeping a fixed time and hoping. The deadline is a hang
//! guard, not a timing assertion; when it passes, the panic names what was
//! awaited and the last thing seen instead.
//!
//! A look returns an [`Observation`]: `Some(value)` / `Ok(value)` / `true` when
//! done; `None` / `false` when not yet; `Err(e)` when not yet, `e` being what was
//! seen (it ends up in the failure message). A look that sees something that
//! can never change (a process that exited) returns the failure as the value,
//! e.g. `Some(Err(..))`, and the caller handles it.

use std::fmt::{Display, Write};
use std::future::Future;
use std::time::{Duration, Instant};

/// The first pause between looks; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between looks: a look may run a command (the agent's
/// `status`), so not much more often than this.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// The result of one look: done with a value, or not yet (with what was seen).
pub trait Observation {
    type Value;
    /// `Ok(value)` when done; `Err(seen)` when not yet.
    fn into_outcome(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Observation for Option<T> {
    type Value = T;
    fn into_outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Observation for Result<T, E> {
    type Value = T;
    fn into_outcome(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:#}")))
    }
}

impl Observation for bool {
    type Value = ();
    fn into_outcome(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

/// Pauses between looks: short at first (most waits are brief), then longer.
struct Pauses {
    start: Instant,
    deadline: Duration,
    next: Duration,
    last_seen: Option<String>,
}

impl Pauses {
    fn new(deadline: Duration) -> Pauses {
        Pauses {
            start: Instant::now(),
            deadline,
            next: FIRST_PAUSE,
            last_seen: None,
        }
    }

    /// Record a look that was not done; the pause before the next one, or
    /// `None` once the deadline has passed.
    fn not_yet(&mut self, seen: Option<String>) -> Option<Duration> {
        if seen.is_some() {
            self.last_seen = seen;
        }
        if self.start.elapsed() >= self.deadline {
            return None;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(MAX_PAUSE);
        Some(pause)
    }

    fn failure(&self, what: &str) -> String {
        let mut msg = format!(
            "gave up after {:?} waiting for {what}",
            self.start.elapsed()
        );
        match &self.last_seen {
            Some(seen) => {
                let _ = write!(msg, "; last seen: {seen}");
            }
            None => msg.push_str("; nothing was observed"),
        }
        msg
    }
}

/// Look (`look()`) until it reports done and return its value. Panics after
/// `deadline` with `what` and the last observation.
pub fn eventually<O: Observation>(
    deadline: Duration,
    what: &str,
    mut look: impl FnMut() -> O,
) -> O::Value {
    let mut pauses = Pauses::new(deadline);
    loop {
        match look().into_outcome() {
            Ok(value) => return value,
            Err(seen) => match pauses.not_yet(seen) {
                Some(pause) => std::thread::sleep(pause),
                None => panic!("{}", pauses.failure(what)),
            },
        }
    }
}

/// [`eventually`] for a look that awaits (inside a tokio runtime).
pub async fn eventually_async<O, F, Fut>(deadline: Duration, what: &str, mut look: F) -> O::Value
where
    O: Observation,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let mut pauses = Pauses::new(deadline);
    loop {
        match look().await.into_outcome() {
            Ok(value) => return value,
            Err(seen) => match pauses.not_yet(seen) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => panic!("{}", pauses.failure(what)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_a_look_produces() {
        let mut n = 0;
        let got = eventually(Duration::from_secs(5), "the third look", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, 3);
        assert_eq!(eventually(Duration::ZERO, "a bool", || true), ());
        let ok: u8 = eventually(Duration::ZERO, "a result", || Ok::<u8, String>(7));
        assert_eq!(ok, 7);
    }

    #[test]
    fn the_failure_names_what_was_awaited_and_the_last_observation() {
        let failure = std::panic::catch_unwind(|| {
            let mut n = 0;
            eventually(Duration::from_millis(50), "the answer", || {
                n += 1;
                Err::<(), String>(format!("look {n} saw 41"))
            })
        })
        .expect_err("must give up");
        let msg = panic_text(failure);
        assert!(msg.contains("waiting for the answer"), "{msg}");
        assert!(msg.contains("saw 41"), "{msg}");
        // The last look's observation, not the first one's.
        assert!(!msg.contains("look 1 saw"), "{msg}");
    }

    #[test]
    fn a_look_without_observations_says_so() {
        let failure =
            std::panic::catch_unwind(|| eventually(Duration::from_millis(20), "nothing", || false))
                .expect_err("must give up");
        assert!(panic_text(failure).contains("nothing was observed"));
    }

    fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn pauses_grow_to_the_cap() {
        let mut p = Pauses::new(Duration::from_secs(60));
        let pauses: Vec<Duration> = (0..8).filter_map(|_| p.not_yet(None)).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(pauses.last().copied(), Some(MAX_PAUSE));
    }

    #[tokio::test]
    async fn the_async_variant_awaits_each_look() {
        let mut n = 0;
        let got = eventually_async(Duration::from_secs(5), "the second look", || {
            n += 1;
            let m = n;
            async move { (m == 2).then_some(m) }
        })
        .await;
        assert_eq!(got, 2);
    }
}
