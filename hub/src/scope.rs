//! Label scopes: a part of the fleet named by a label selector (`site=plant-a`),
//! and the one rule for whether something aimed at a selector falls inside it.
//!
//! The admission policy (`admission`) uses scopes to say which deployments a
//! rule governs; the same pure [`covers`] is meant for anything else that is
//! limited to part of the fleet (e.g. an API token restricted to a site), so
//! every such decision agrees on what "inside the scope" means.

use crate::deploy::check_label;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// A label selector naming a part of the fleet. Written as a string,
/// `"site=plant-a,role=gateway"`, or as a table like a deployment's selector,
/// `{ site = "plant-a", role = "gateway" }`. The empty scope (`""` or `{}`)
/// is the whole fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scope(pub BTreeMap<String, String>);

/// Why a scope could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {input:?} is invalid: {problem}")]
pub struct ScopeError {
    pub input: String,
    pub problem: String,
}

/// Does `scope` cover something aimed at `selector`? True when the selector is
/// at least as narrow as the scope: it requires every label the scope requires,
/// with the same value (it may require more). Every device such a selector
/// matches then carries the scope's labels, so it lies inside the scope. The
/// empty scope covers every selector.
///
/// Pure and total: the one definition of "inside a scope" for the admission
/// policy and for whatever else is limited to part of the fleet.
pub fn covers(scope: &BTreeMap<String, String>, selector: &BTreeMap<String, String>) -> bool {
    scope.iter().all(|(k, v)| selector.get(k) == Some(v))
}

impl Scope {
    /// Parse `key=value[,key=value…]`; an empty (or all-blank) string is the
    /// whole fleet. Keys and values follow the label rules of deployments.
    pub fn parse(input: &str) -> Result<Scope, ScopeError> {
        let bad = |problem: String| ScopeError {
            input: input.to_string(),
            problem,
        };
        let mut labels = BTreeMap::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} must be KEY=VALUE")))?;
            let (k, v) = (k.trim(), v.trim());
            check_label("scope", k, v).map_err(|e| bad(e.problem))?;
            if labels.insert(k.to_string(), v.to_string()).is_some() {
                return Err(bad(format!("label {k:?} is given twice")));
            }
        }
        Ok(Scope(labels))
    }

    /// Check a scope given as a table (labels as deployments spell them).
    pub fn from_labels(labels: BTreeMap<String, String>) -> Result<Scope, ScopeError> {
        for (k, v) in &labels {
            check_label("scope", k, v).map_err(|e| ScopeError {
                input: format!("{labels:?}"),
                problem: e.problem,
            })?;
        }
        Ok(Scope(labels))
    }

    /// See [`covers`].
    pub fn covers(&self, selector: &BTreeMap<String, String>) -> bool {
        covers(&self.0, selector)
    }

    /// The whole fleet?
    pub fn is_everything(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Scope {
    /// `site=plant-a,role=gateway`, keys sorted; empty for the whole fleet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Table(BTreeMap<String, String>),
        }
        match Written::deserialize(d)? {
            Written::Text(s) => Scope::parse(&s),
            Written::Table(t) => Scope::from_labels(t),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Labels from pairs: what the unit tests of every module that reasons
/// about labels build their inputs with.
#[cfg(test)]
pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_is_covered_when_it_is_at_least_as_narrow_as_the_scope() {
        type Labels = &'static [(&'static str, &'static str)];
        let cases: &[(Labels, Labels, bool)] = &[
            (&[("site", "a")], &[("site", "a")], true),
            (&[("site", "a")], &[("site", "a"), ("role", "gw")], true),
            (&[("site", "a")], &[("site", "b")], false),
            // Broader than the scope: it also reaches devices outside it.
            (&[("site", "a"), ("role", "gw")], &[("site", "a")], false),
            (&[("site", "a")], &[("role", "gw")], false),
            // The empty scope is the whole fleet.
            (&[], &[("site", "a")], true),
            (&[], &[], true),
        ];
        for (scope, selector, want) in cases {
            assert_eq!(
                covers(&labels(scope), &labels(selector)),
                *want,
                "scope {scope:?} selector {selector:?}"
            );
        }
    }

    #[test]
    fn scopes_parse_from_text_or_table_and_print_back() {
        let s = Scope::parse("site=plant-a, role=gw").unwrap();
        assert_eq!(s.0, labels(&[("site", "plant-a"), ("role", "gw")]));
        assert_eq!(s.to_string(), "role=gw,site=plant-a");
        assert_eq!(Scope::parse(&s.to_string()).unwrap(), s);
        assert!(Scope::parse("").unwrap().is_everything());

        #[derive(Deserialize)]
        struct W {
            scope: Scope,
        }
        let t: W = toml::from_str("scope = { site = \"plant-a\" }").unwrap();
        assert_eq!(t.scope, Scope::parse("site=plant-a").unwrap());
        let t: W = toml::from_str("scope = \"site=plant-a\"").unwrap();
        assert_eq!(t.scope.0["site"], "plant-a");

        for bad in ["site", "site=", "=a", "site=a,site=b", "bad key=x"] {
            let e = Scope::parse(bad).unwrap_err();
            assert_eq!(e.input, bad, "{e}");
        }
        assert!(toml::from_str::<W>("scope = { \"bad key\" = \"x\" }").is_err());
    }
}
