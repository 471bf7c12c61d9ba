//! `outpost-hub secret set|list|rm`: secrets through the API (the running hub
//! holds the database and the at-rest key), with an unscoped admin token.
//! A value is set for the fleet or a scope (the same flags and precedence as
//! `config`). Nothing here prints a value: only name, scope, version,
//! SHA-256 and size.

use crate::cli_config::ScopeArgs;
use crate::client::ApiClient;
use crate::hub::{now_secs, SecretInfo, SecretOutcome};
use crate::text::ago;
use anyhow::{Context, Result};
use clap::Subcommand;
use reqwest::Method;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set (or rotate) a secret from a file; apps mount it with
    /// `secrets = [{ name = "NAME", path = "/run/secrets/NAME" }]`.
    Set {
        name: String,
        #[arg(long = "from-file")]
        from_file: PathBuf,
        /// Where this value applies (nothing: the whole fleet); a device
        /// gets the most specific value that applies to it.
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Name, scope, version, SHA-256 and size of every value.
    List,
    /// Remove a value (at the scope given); refused while an app would be
    /// left without one.
    Rm {
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// The table `secret list` prints.
pub fn table(secrets: &[SecretInfo], now: u64) -> String {
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                if s.scope_text.is_empty() {
                    "fleet".into()
                } else {
                    s.scope_text.clone()
                },
                s.version.to_string(),
                s.sha256.chars().take(16).collect(),
                s.size.to_string(),
                format!("{} by {}", ago(s.updated_at, now), s.updated_by),
            ]
        })
        .collect();
    crate::text::table(
        &["NAME", "SCOPE", "VERSION", "SHA256", "BYTES", "UPDATED"],
        &rows,
        &[],
    )
}

pub async fn run(cmd: SecretCommand, c: &ApiClient, json: bool) -> Result<()> {
    match cmd {
        SecretCommand::Set {
            name,
            from_file,
            scope,
        } => {
            let value = zeroize::Zeroizing::new(
                std::fs::read(&from_file)
                    .with_context(|| format!("reading --from-file {}", from_file.display()))?,
            );
            let out: SecretOutcome = c
                .put_bytes(
                    &format!("/v1/secrets/{name}{}", query(&scope)?),
                    value.to_vec(),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if out.changed {
                println!(
                    "secret {} set for {}: version {}, {} bytes, sha256 {}; {} device(s) get a new manifest",
                    out.secret.name,
                    out.secret.scope_text,
                    out.secret.version,
                    out.secret.size,
                    out.secret.sha256,
                    out.updated.len()
                );
            } else {
                println!(
                    "secret {} unchanged (version {})",
                    out.secret.name, out.secret.version
                );
            }
        }
        SecretCommand::List => {
            let all: Vec<SecretInfo> = c.get("/v1/secrets").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", table(&all, now_secs()));
            }
        }
        SecretCommand::Rm { name, scope } => {
            let s: SecretInfo = c
                .call::<(), _>(
                    Method::DELETE,
                    &format!("/v1/secrets/{name}{}", query(&scope)?),
                    None,
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "secret {} (version {}) removed from {}",
                    s.name, s.version, s.scope_text
                );
            }
        }
    }
    Ok(())
}

/// The scope flags as the API's query string (`?device=…`), empty for the
/// whole fleet.
fn query(scope: &ScopeArgs) -> Result<String> {
    let selector = scope.selector.join(",");
    let pairs: Vec<(&str, &str)> = [
        ("device", scope.device.as_deref()),
        (
            "selector",
            (!selector.is_empty()).then_some(selector.as_str()),
        ),
        ("deployment", scope.deployment.as_deref()),
        ("app", scope.app.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    if pairs.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("?{}", serde_urlencoded::to_string(pairs)?))
}
