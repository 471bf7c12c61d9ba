//! `outpost-hub token create|list|revoke`: API tokens through the API (the
//! running hub holds the database), with an admin token.

use crate::access::Role;
use crate::client::ApiClient;
use crate::hub::now_secs;
use crate::scope::Scope;
use crate::text::{ago, ago_or_never};
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
    },
    /// The tokens: name, role, scope, when made and last used.
    List,
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

/// The table `token list` prints.
pub fn table(tokens: &[TokenView], now: u64) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.to_string(),
                if t.scope.is_everything() {
                    "*".into()
                } else {
                    t.scope.to_string()
                },
                ago(t.created_at, now),
                ago_or_never(t.last_used, now),
                match t.revoked_at {
                    Some(r) => format!("revoked {}", ago(r, now)),
                    None => "live".into(),
                },
            ]
        })
        .collect();
    crate::text::table(
        &["NAME", "ROLE", "SCOPE", "CREATED", "LAST USED", "STATE"],
        &rows,
        &[],
    )
}

pub async fn run(cmd: TokenCommand, c: &ApiClient, json: bool) -> Result<()> {
    match cmd {
        TokenCommand::Create { name, role, scope } => {
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
        TokenCommand::List => {
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
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("token {} revoked", t.name);
            }
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
            lines[1].contains("30 s ago") && lines[1].contains("live"),
            "{out}"
        );
        assert!(
            lines[2].contains("site=plant-a")
                && lines[2].contains("never")
                && lines[2].contains("revoked 2 h ago"),
            "{out}"
        );
        assert!(lines[1].contains("2 d ago"), "{out}");
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
}
