//! `outpost-hub token create|list|revoke`: API tokens through the API (the
//! running hub holds the database), with an admin token.

use crate::access::Role;
use crate::client::ApiClient;
use crate::hub::now_secs;
use crate::scope::Scope;
use crate::tokens::{NewToken, TokenView};
use anyhow::{Context, Result};
use clap::Subcommand;
use reqwest::Method;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token; its secret is printed once and never stored.
    Create {
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: Role,
        /// KEY=VALUE, repeatable (all must match): the part of the fleet the
        /// token sees and changes. None: the whole fleet.
        #[arg(long = "scope")]
        scope: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// The tokens: name, role, scope, when made and last used.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it fails from the next request on.
    Revoke { name: String },
}

impl clap::ValueEnum for Role {
    fn value_variants<'a>() -> &'a [Self] {
        &[Role::Admin, Role::Operator, Role::Viewer]
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// `30s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn relative(t: u64, now: u64) -> String {
    let d = now.saturating_sub(t);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86_399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86_400),
    }
}

/// The table `token list` prints, columns as wide as their widest cell.
pub fn table(tokens: &[TokenView], now: u64) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "ROLE".into(),
        "SCOPE".into(),
        "CREATED".into(),
        "LAST USED".into(),
        "STATE".into(),
    ]];
    for t in tokens {
        rows.push([
            t.name.clone(),
            t.role.to_string(),
            if t.scope.is_everything() {
                "*".into()
            } else {
                t.scope.to_string()
            },
            relative(t.created_at, now),
            t.last_used
                .map(|u| relative(u, now))
                .unwrap_or_else(|| "never".into()),
            match t.revoked_at {
                Some(r) => format!("revoked {}", relative(r, now)),
                None => "live".into(),
            },
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub async fn run(cmd: TokenCommand, c: &ApiClient) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            scope,
            json,
        } => {
            let scope = Scope::parse(&scope.join(","))
                .with_context(|| format!("--scope {}", scope.join(" --scope ")))?;
            let body = serde_json::json!({ "name": name, "role": role, "scope": scope });
            let made: NewToken = c.call(Method::POST, "/v1/tokens", Some(&body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&made)?);
            } else {
                let t = &made.token;
                println!(
                    "token {} ({}, scope {}) created; its secret, shown this once:",
                    t.name,
                    t.role,
                    if t.scope.is_everything() {
                        "whole fleet".to_string()
                    } else {
                        t.scope.to_string()
                    }
                );
                println!("{}", made.secret);
                println!("use it with --token or OUTPOST_HUB_TOKEN");
            }
        }
        TokenCommand::List { json } => {
            let all: Vec<TokenView> = c.get("/v1/tokens").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", table(&all, now_secs()));
            }
        }
        TokenCommand::Revoke { name } => {
            let t: TokenView = c
                .call::<(), _>(Method::DELETE, &format!("/v1/tokens/{name}"), None)
                .await?;
            println!("token {} revoked", t.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_an_aligned_table_with_relative_times() {
        let now = 1_000_000;
        let t =
            |name: &str, role, scope: &str, last: Option<u64>, revoked: Option<u64>| TokenView {
                name: name.into(),
                role,
                scope: Scope::parse(scope).unwrap(),
                created_at: now - 2 * 86_400,
                created_by: "hub".into(),
                last_used: last,
                revoked_at: revoked,
            };
        let out = table(
            &[
                t("admin", Role::Admin, "", Some(now - 30), None),
                t(
                    "plant-a-ops",
                    Role::Operator,
                    "site=plant-a",
                    None,
                    Some(now - 7200),
                ),
            ],
            now,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].contains("30s ago") && lines[1].contains("live"),
            "{out}"
        );
        assert!(
            lines[2].contains("site=plant-a")
                && lines[2].contains("never")
                && lines[2].contains("revoked 2h ago"),
            "{out}"
        );
        assert!(lines[1].contains("2d ago"), "{out}");
        // Every ROLE cell starts in the same column.
        let starts: Vec<usize> = lines
            .iter()
            .map(|l| {
                ["ROLE", "admin", "operator"]
                    .iter()
                    .filter_map(|w| {
                        let i = l.find(&format!("  {w}"))?;
                        Some(i + 2)
                    })
                    .next()
                    .unwrap()
            })
            .collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{out}");
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(10, 10), "0s ago");
        assert_eq!(relative(0, 59), "59s ago");
        assert_eq!(relative(0, 60), "1m ago");
        assert_eq!(relative(0, 3600), "1h ago");
        assert_eq!(relative(0, 86_400 * 3), "3d ago");
        assert_eq!(relative(50, 10), "0s ago");
    }
}
