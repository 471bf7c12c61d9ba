//! Progress bars for the CLI's long waits (`rollout status --watch`, image
//! pulls in `status --watch`): what a bar shows is a pure function of an API
//! answer ([`rollout_bar`], [`pull_bars`]); drawing is indicatif's, on a
//! terminal only (a pipe or a script gets the tables, or `--json`).

use crate::hub::rollouts::view::RolloutView;
use outpost_protocol::{AppState, StatusReport};

/// One bar: position, length and the words beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub key: String,
    pub pos: u64,
    pub len: u64,
    pub message: String,
}

/// A rollout as one bar: devices settled (committed, failed or skipped) out
/// of the devices it selects, with its state in words. (Pure.)
pub fn rollout_bar(v: &RolloutView) -> Bar {
    let t = &v.tally;
    let settled = t.committed + t.failed + t.skipped;
    let len = (settled + t.pending + t.untargeted).max(v.matched).max(1);
    Bar {
        key: v.deployment.clone(),
        pos: settled as u64,
        len: len as u64,
        message: format!(
            "{} revision {}: {} committed, {} failed, {} pending; {}",
            v.deployment, v.revision, t.committed, t.failed, t.pending, v.state
        ),
    }
}

/// One bar per app the device is pulling, from its status. (Pure.)
pub fn pull_bars(status: &StatusReport) -> Vec<Bar> {
    status
        .apps
        .iter()
        .filter_map(|a| match a.state {
            AppState::Pulling { done, total } => Some(Bar {
                key: a.name.clone(),
                pos: done.min(total),
                len: total.max(1),
                message: format!("{}: pulling its image", a.name),
            }),
            _ => None,
        })
        .collect()
}

/// Bars on the terminal, by key; bars whose key is gone are finished.
pub struct Bars {
    multi: indicatif::MultiProgress,
    bars: std::collections::BTreeMap<String, indicatif::ProgressBar>,
    bytes: bool,
}

impl Bars {
    /// `bytes`: lengths are byte counts (pulls), else plain counts.
    pub fn new(bytes: bool) -> Bars {
        Bars {
            multi: indicatif::MultiProgress::new(),
            bars: std::collections::BTreeMap::new(),
            bytes,
        }
    }

    /// Show exactly `want`.
    pub fn show(&mut self, want: &[Bar]) {
        let template = if self.bytes {
            "{bar:30} {bytes}/{total_bytes} {msg}"
        } else {
            "{bar:30} {pos}/{len} {msg}"
        };
        let style = indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let gone: Vec<String> = self
            .bars
            .keys()
            .filter(|k| !want.iter().any(|b| &b.key == *k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(b) = self.bars.remove(&k) {
                b.finish();
            }
        }
        for b in want {
            let bar = self.bars.entry(b.key.clone()).or_insert_with(|| {
                let p = self.multi.add(indicatif::ProgressBar::new(b.len));
                p.set_style(style.clone());
                p
            });
            bar.set_length(b.len);
            bar.set_position(b.pos);
            bar.set_message(b.message.clone());
        }
    }

    pub fn finish(self) {
        for b in self.bars.values() {
            b.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::AppStatus;

    #[test]
    fn pulls_become_bars_and_other_apps_do_not() {
        let app = |name: &str, state| AppStatus {
            name: name.into(),
            state,
            restarts: 0,
            last_error: None,
            image_digest: None,
            ready: None,
        };
        let st = StatusReport {
            apps: vec![
                app("web", AppState::Pulling { done: 5, total: 10 }),
                app("db", AppState::Running { pid: 3 }),
                app("odd", AppState::Pulling { done: 9, total: 0 }),
            ],
            ..StatusReport::blank("pi-1".parse().unwrap(), 1, 1)
        };
        let bars = pull_bars(&st);
        assert_eq!(bars.len(), 2);
        assert_eq!(
            (bars[0].key.as_str(), bars[0].pos, bars[0].len),
            ("web", 5, 10)
        );
        // A total not known yet never draws past the end.
        assert_eq!((bars[1].pos, bars[1].len), (0, 1));
    }
}
