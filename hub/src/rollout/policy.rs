//! The `[rollout]` table of a deployment: its serde form ([`RolloutDef`], as
//! the operator writes it and as the store keeps it), its checks
//! ([`PolicyError`]) and the validated [`RolloutPolicy`] the scheduler reads,
//! including how a policy's waves become cumulative device counts for a fleet
//! of a given size ([`RolloutPolicy::cumulative`]).

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// At most this many waves after the canary: a longer list is a typo or a
/// generated file gone wrong, and every wave costs a status round trip.
pub const MAX_WAVES: usize = 100;

/// Default `wave_timeout_secs`: an hour, long enough to pull large images
/// over a slow uplink, short enough that a stuck wave is noticed the same day.
pub const DEFAULT_WAVE_TIMEOUT_SECS: u64 = 3600;

/// Default `offline_grace_secs`: ten missed status reports at the agent's
/// default 30 s interval (`edge-agent/src/config.rs`).
pub const DEFAULT_OFFLINE_GRACE_SECS: u64 = 300;

/// One wave's size as written. Waves are cumulative: each says how many
/// devices have been targeted once that wave has been targeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    /// `"10%"`: a whole percentage of the devices the deployment matches,
    /// rounded up (10% of 5 devices is 1 device).
    Percent(u32),
    /// `25`: an absolute number of devices (capped at the fleet's size).
    Count(u64),
}

impl WaveSize {
    /// Cumulative devices this wave stands for in a fleet of `fleet`.
    fn devices(self, fleet: usize) -> usize {
        match self {
            // Widened so `fleet * 100` cannot overflow; the result is at
            // most `fleet`, so it fits back.
            WaveSize::Percent(p) => {
                let n = (fleet as u128 * u128::from(p)).div_ceil(100);
                usize::try_from(n).unwrap_or(fleet).min(fleet)
            }
            WaveSize::Count(c) => usize::try_from(c).unwrap_or(usize::MAX).min(fleet),
        }
    }
}

/// As written in the file: `"10%"` or `25`.
impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Percent(p) => write!(f, "\"{p}%\""),
            WaveSize::Count(c) => write!(f, "{c}"),
        }
    }
}

impl Serialize for WaveSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WaveSize::Percent(p) => s.serialize_str(&format!("{p}%")),
            WaveSize::Count(c) => s.serialize_u64(*c),
        }
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WaveSize, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = WaveSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device count like 5 or a whole percentage like \"10%\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WaveSize, E> {
                Ok(WaveSize::Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WaveSize, E> {
                u64::try_from(v)
                    .map(WaveSize::Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WaveSize, E> {
                // The range (1..=100) is checked by `RolloutDef::policy`, which
                // names the wave's index; here only the shape.
                v.strip_suffix('%')
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .map(WaveSize::Percent)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// `max_failure_ratio` as written. A newtype so the deployment types keep
/// `Eq`: two ratios are equal when their bits are (no NaN arithmetic is done
/// on them; `RolloutDef::policy` refuses NaN).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl PartialEq for Ratio {
    fn eq(&self, other: &Ratio) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Ratio {}

/// The optional `[rollout]` table of a deployment, as written. Every field has
/// a default; see `docs/deployments.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutDef {
    /// Devices in wave 0. `0`: no canary, the first wave is wave 1.
    #[serde(default)]
    pub canary: u64,
    /// Cumulative sizes of waves 1, 2, …; the last must be `"100%"`.
    #[serde(default = "default_waves")]
    pub waves: Vec<WaveSize>,
    /// The rollout pauses when more than this share of the counted devices
    /// failed (see the scheduler's module doc for what is counted).
    #[serde(default)]
    pub max_failure_ratio: Ratio,
    #[serde(default = "default_wave_timeout")]
    pub wave_timeout_secs: u64,
    #[serde(default = "default_offline_grace")]
    pub offline_grace_secs: u64,
}

fn default_waves() -> Vec<WaveSize> {
    vec![WaveSize::Percent(100)]
}
fn default_wave_timeout() -> u64 {
    DEFAULT_WAVE_TIMEOUT_SECS
}
fn default_offline_grace() -> u64 {
    DEFAULT_OFFLINE_GRACE_SECS
}

impl Default for RolloutDef {
    /// What a deployment without `[rollout]` gets: no canary, one wave of
    /// every matched device (the behaviour before rollouts existed).
    fn default() -> RolloutDef {
        RolloutDef {
            canary: 0,
            waves: default_waves(),
            max_failure_ratio: Ratio(0.0),
            wave_timeout_secs: DEFAULT_WAVE_TIMEOUT_SECS,
            offline_grace_secs: DEFAULT_OFFLINE_GRACE_SECS,
        }
    }
}

/// A `[rollout]` field that does not hold a usable value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct PolicyError {
    /// Path as in the file: `rollout.waves[2]`, `rollout.max_failure_ratio`.
    pub field: String,
    pub problem: PolicyProblem,
}

/// What is wrong with a `[rollout]` field; every message carries the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyProblem {
    #[error("is empty; list at least one wave, the last one \"100%\"")]
    NoWaves,
    #[error("has {count} waves; the limit is {max}")]
    TooManyWaves { count: usize, max: usize },
    #[error("\"{value}%\" is not a whole percentage from 1% to 100%")]
    PercentOutOfRange { value: u32 },
    #[error("0 devices: a wave must add at least one device")]
    ZeroCount,
    #[error(
        "{value} is not more than the earlier wave {previous}; waves are cumulative \
         (each is the number of devices targeted once it starts), so they must increase"
    )]
    NotIncreasing { value: WaveSize, previous: WaveSize },
    #[error(
        "{value} devices is not more than canary = {canary}; the canary is wave 0 and \
         counts toward the later waves"
    )]
    NotAboveCanary { value: u64, canary: u64 },
    #[error("the last wave is {value}; it must be \"100%\" so every matched device is reached")]
    LastNotFull { value: WaveSize },
    #[error("{value} is not a ratio from 0 to 1 (0.05 pauses when more than 5% failed)")]
    RatioOutOfRange { value: f64 },
    #[error("{value} s: must be at least 1 second")]
    ZeroSecs { value: u64 },
    #[error(
        "{grace} s is not less than wave_timeout_secs = {timeout} s; an unreachable device \
         would time its wave out before it could be skipped"
    )]
    GraceNotBelowTimeout { grace: u64, timeout: u64 },
}

fn bad(field: impl Into<String>, problem: PolicyProblem) -> PolicyError {
    PolicyError {
        field: field.into(),
        problem,
    }
}

/// A checked rollout policy. Only [`RolloutDef::policy`] (or `default()`)
/// makes one, so the scheduler never sees an inconsistent policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPolicy {
    canary: u64,
    waves: Vec<WaveSize>,
    /// `max_failure_ratio` in parts per million: the scheduler compares
    /// integers, so the same counts always give the same decision.
    max_failure_ppm: u32,
    wave_timeout_secs: u64,
    offline_grace_secs: u64,
}

impl Default for RolloutPolicy {
    fn default() -> RolloutPolicy {
        RolloutPolicy {
            canary: 0,
            waves: default_waves(),
            max_failure_ppm: 0,
            wave_timeout_secs: DEFAULT_WAVE_TIMEOUT_SECS,
            offline_grace_secs: DEFAULT_OFFLINE_GRACE_SECS,
        }
    }
}

impl RolloutDef {
    /// Check every field; the first problem found is returned with its path.
    pub fn policy(&self) -> Result<RolloutPolicy, PolicyError> {
        let waves = &self.waves;
        let Some(last) = waves.last() else {
            return Err(bad("rollout.waves", PolicyProblem::NoWaves));
        };
        if waves.len() > MAX_WAVES {
            return Err(bad(
                "rollout.waves",
                PolicyProblem::TooManyWaves {
                    count: waves.len(),
                    max: MAX_WAVES,
                },
            ));
        }
        // Percentages and counts are compared each among their own kind: which
        // of "10%" and 50 is larger depends on the fleet. At run time a wave
        // that adds no device for the fleet at hand is passed over.
        let mut last_percent: Option<WaveSize> = None;
        let mut last_count: Option<WaveSize> = None;
        for (i, &w) in waves.iter().enumerate() {
            let field = format!("rollout.waves[{i}]");
            let previous = match w {
                WaveSize::Percent(p) => {
                    if p == 0 || p > 100 {
                        return Err(bad(field, PolicyProblem::PercentOutOfRange { value: p }));
                    }
                    last_percent.replace(w)
                }
                WaveSize::Count(c) => {
                    if c == 0 {
                        return Err(bad(field, PolicyProblem::ZeroCount));
                    }
                    if c <= self.canary {
                        return Err(bad(
                            field,
                            PolicyProblem::NotAboveCanary {
                                value: c,
                                canary: self.canary,
                            },
                        ));
                    }
                    last_count.replace(w)
                }
            };
            let increasing = match (previous, w) {
                (Some(WaveSize::Percent(a)), WaveSize::Percent(b)) => b > a,
                (Some(WaveSize::Count(a)), WaveSize::Count(b)) => b > a,
                _ => true,
            };
            if let (false, Some(previous)) = (increasing, previous) {
                return Err(bad(
                    field,
                    PolicyProblem::NotIncreasing { value: w, previous },
                ));
            }
        }
        if *last != WaveSize::Percent(100) {
            return Err(bad(
                "rollout.waves",
                PolicyProblem::LastNotFull { value: *last },
            ));
        }
        let ratio = self.max_failure_ratio.0;
        // `contains` is false for NaN, so NaN is refused here too.
        if !(0.0..=1.0).contains(&ratio) {
            return Err(bad(
                "rollout.max_failure_ratio",
                PolicyProblem::RatioOutOfRange { value: ratio },
            ));
        }
        for (field, value) in [
            ("rollout.wave_timeout_secs", self.wave_timeout_secs),
            ("rollout.offline_grace_secs", self.offline_grace_secs),
        ] {
            if value == 0 {
                return Err(bad(field, PolicyProblem::ZeroSecs { value }));
            }
        }
        if self.offline_grace_secs >= self.wave_timeout_secs {
            return Err(bad(
                "rollout.offline_grace_secs",
                PolicyProblem::GraceNotBelowTimeout {
                    grace: self.offline_grace_secs,
                    timeout: self.wave_timeout_secs,
                },
            ));
        }
        Ok(RolloutPolicy {
            canary: self.canary,
            waves: waves.clone(),
            // In range after the check above, so the cast cannot saturate.
            max_failure_ppm: (ratio * 1_000_000.0).round() as u32,
            wave_timeout_secs: self.wave_timeout_secs,
            offline_grace_secs: self.offline_grace_secs,
        })
    }
}

impl RolloutPolicy {
    pub fn canary(&self) -> u64 {
        self.canary
    }
    /// Waves 1, 2, … as written (wave 0 is the canary).
    pub fn waves(&self) -> &[WaveSize] {
        &self.waves
    }
    pub fn max_failure_ppm(&self) -> u32 {
        self.max_failure_ppm
    }
    pub fn wave_timeout_secs(&self) -> u64 {
        self.wave_timeout_secs
    }
    pub fn offline_grace_secs(&self) -> u64 {
        self.offline_grace_secs
    }

    /// Number of waves including the (possibly empty) canary wave 0.
    pub fn wave_count(&self) -> usize {
        self.waves.len() + 1
    }

    /// For a fleet of `fleet` devices: entry `w` is how many devices are
    /// targeted once wave `w` has been targeted. Index 0 is the canary
    /// (`min(canary, fleet)`, 0 without one); the entries never decrease (a
    /// wave smaller than an earlier one for this fleet adds nothing) and the
    /// last is `fleet`.
    pub fn cumulative(&self, fleet: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.wave_count());
        let mut reached = WaveSize::Count(self.canary).devices(fleet);
        out.push(reached);
        for w in &self.waves {
            reached = reached.max(w.devices(fleet));
            out.push(reached);
        }
        out
    }

    /// Whether `failed` devices out of `counted` exceed the ratio: strictly
    /// more than `max_failure_ratio × counted`, compared in integers.
    pub fn failures_exceed(&self, failed: usize, counted: usize) -> bool {
        failed as u128 * 1_000_000 > u128::from(self.max_failure_ppm) * counted as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(toml_text: &str) -> RolloutDef {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_are_one_wave_of_everyone() {
        let d = def("");
        assert_eq!(d, RolloutDef::default());
        let p = d.policy().unwrap();
        assert_eq!(p, RolloutPolicy::default());
        assert_eq!(p.cumulative(7), vec![0, 7]);
        assert_eq!(p.wave_count(), 2);
        assert_eq!(p.max_failure_ppm(), 0);
        assert_eq!(p.wave_timeout_secs(), DEFAULT_WAVE_TIMEOUT_SECS);
        assert_eq!(p.offline_grace_secs(), DEFAULT_OFFLINE_GRACE_SECS);
    }

    #[test]
    fn parses_the_documented_table() {
        let d = def(r#"
canary = 1
waves = [5, "10%", "50%", "100%"]
max_failure_ratio = 0.05
wave_timeout_secs = 1800
offline_grace_secs = 600
"#);
        assert_eq!(
            d.waves,
            vec![
                WaveSize::Count(5),
                WaveSize::Percent(10),
                WaveSize::Percent(50),
                WaveSize::Percent(100)
            ]
        );
        let p = d.policy().unwrap();
        assert_eq!(p.canary(), 1);
        assert_eq!(p.max_failure_ppm(), 50_000);
        // 200 devices: canary 1, then 5, then 10% = 20, 50% = 100, all.
        assert_eq!(p.cumulative(200), vec![1, 5, 20, 100, 200]);
        // 20 devices: 10% = 2 is below the 5 already reached: that wave adds nothing.
        assert_eq!(p.cumulative(20), vec![1, 5, 5, 10, 20]);
        // Percentages round up; counts are capped at the fleet.
        assert_eq!(p.cumulative(3), vec![1, 3, 3, 3, 3]);
        assert_eq!(p.cumulative(0), vec![0, 0, 0, 0, 0]);
        // An integer ratio is accepted as written.
        assert_eq!(
            def("max_failure_ratio = 1")
                .policy()
                .unwrap()
                .max_failure_ppm(),
            1_000_000
        );
    }

    #[test]
    fn round_trips_through_the_stores_json() {
        let d = def(r#"canary = 2
waves = [10, "100%"]
max_failure_ratio = 0.25"#);
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(r#""waves":[10,"100%"]"#), "{json}");
        let back: RolloutDef = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn each_bad_value_names_its_field_and_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("waves = []", "rollout.waves", "is empty"),
            (r#"waves = ["0%", "100%"]"#, "rollout.waves[0]", "\"0%\""),
            (r#"waves = ["150%"]"#, "rollout.waves[0]", "\"150%\""),
            (r#"waves = [0, "100%"]"#, "rollout.waves[0]", "0 devices"),
            (
                r#"waves = ["50%", "10%", "100%"]"#,
                "rollout.waves[1]",
                "\"10%\" is not more than the earlier wave \"50%\"",
            ),
            (
                r#"waves = ["50%", "100%", "100%"]"#,
                "rollout.waves[2]",
                "\"100%\" is not more than the earlier wave \"100%\"",
            ),
            (
                r#"waves = [10, 10, "100%"]"#,
                "rollout.waves[1]",
                "10 is not more than the earlier wave 10",
            ),
            (
                "canary = 5\nwaves = [3, \"100%\"]",
                "rollout.waves[0]",
                "3 devices is not more than canary = 5",
            ),
            (
                r#"waves = ["10%", "50%"]"#,
                "rollout.waves",
                "last wave is \"50%\"",
            ),
            (
                r#"waves = ["100%", 500]"#,
                "rollout.waves",
                "last wave is 500",
            ),
            (
                "max_failure_ratio = 1.5",
                "rollout.max_failure_ratio",
                "1.5 is not",
            ),
            (
                "max_failure_ratio = -0.1",
                "rollout.max_failure_ratio",
                "-0.1 is not",
            ),
            (
                "max_failure_ratio = nan",
                "rollout.max_failure_ratio",
                "NaN is not",
            ),
            ("wave_timeout_secs = 0", "rollout.wave_timeout_secs", "0 s"),
            (
                "offline_grace_secs = 0",
                "rollout.offline_grace_secs",
                "0 s",
            ),
            (
                "wave_timeout_secs = 60\noffline_grace_secs = 60",
                "rollout.offline_grace_secs",
                "60 s is not less than wave_timeout_secs = 60 s",
            ),
        ];
        for (text, field, says) in cases {
            let e = def(text).policy().unwrap_err();
            assert_eq!(&e.field, field, "{text}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(says), "{text}: {msg}");
            assert!(msg.starts_with(&format!("field `{field}`: ")), "{msg}");
        }
        let many = RolloutDef {
            waves: (1..=101).map(WaveSize::Count).collect(),
            ..RolloutDef::default()
        };
        let e = many.policy().unwrap_err();
        assert_eq!(
            e.problem,
            PolicyProblem::TooManyWaves {
                count: 101,
                max: 100
            }
        );
    }

    #[test]
    fn a_malformed_wave_is_refused_while_parsing() {
        for text in [
            r#"waves = ["ten percent"]"#,
            "waves = [-3]",
            "waves = [0.5]",
            r#"waves = ["5.5%"]"#,
        ] {
            let e = toml::from_str::<RolloutDef>(text).unwrap_err();
            assert!(
                e.to_string()
                    .contains("a device count like 5 or a whole percentage"),
                "{text}: {e}"
            );
        }
        let e = toml::from_str::<RolloutDef>("wave = [\"100%\"]").unwrap_err();
        assert!(e.to_string().contains("wave"), "{e}");
    }

    #[test]
    fn the_failure_rule_is_strictly_more_than_the_ratio() {
        let p = def("max_failure_ratio = 0.05").policy().unwrap();
        // One failure among the canary alone: 1 > 0.05 × 1.
        assert!(p.failures_exceed(1, 1));
        // One in twenty is exactly 5%: not more, so not exceeded.
        assert!(!p.failures_exceed(1, 20));
        assert!(p.failures_exceed(2, 20));
        assert!(!p.failures_exceed(0, 0));
        let zero = RolloutPolicy::default();
        assert!(zero.failures_exceed(1, 10_000));
        assert!(!zero.failures_exceed(0, 10_000));
        let one = def("max_failure_ratio = 1.0").policy().unwrap();
        assert!(!one.failures_exceed(10, 10));
    }
}
