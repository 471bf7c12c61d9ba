//! `outpost-hub secret set|list|rm`: secrets through the API (the running hub
//! holds the database and the at-rest key), with an unscoped admin token.
//! Nothing here prints a value: only name, version, SHA-256 and size.

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
    },
    /// Name, version, SHA-256 and size of every secret.
    List,
    /// Remove a secret no deployment mounts.
    Rm { name: String },
}

/// The table `secret list` prints.
pub fn table(secrets: &[SecretInfo], now: u64) -> String {
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.version.to_string(),
                s.sha256.chars().take(16).collect(),
                s.size.to_string(),
                format!("{} by {}", ago(s.updated_at, now), s.updated_by),
            ]
        })
        .collect();
    crate::text::table(
        &["NAME", "VERSION", "SHA256", "BYTES", "UPDATED"],
        &rows,
        &[],
    )
}

pub async fn run(cmd: SecretCommand, c: &ApiClient, json: bool) -> Result<()> {
    match cmd {
        SecretCommand::Set { name, from_file } => {
            let value = zeroize::Zeroizing::new(
                std::fs::read(&from_file)
                    .with_context(|| format!("reading --from-file {}", from_file.display()))?,
            );
            let out: SecretOutcome = c
                .put_bytes(&format!("/v1/secrets/{name}"), value.to_vec())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if out.changed {
                println!(
                    "secret {} set: version {}, {} bytes, sha256 {}; {} device(s) get a new manifest",
                    out.secret.name,
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
        SecretCommand::Rm { name } => {
            let s: SecretInfo = c
                .call::<(), _>(Method::DELETE, &format!("/v1/secrets/{name}"), None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("secret {} (version {}) removed", s.name, s.version);
            }
        }
    }
    Ok(())
}
