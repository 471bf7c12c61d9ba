//! `outpost-hub config set|unset|list`: configuration variables through the
//! API. The scope flags say where a variable is set (`crate::vars` has the
//! precedence); `list --device` shows what each app on a device gets and
//! from where.

use crate::client::ApiClient;
use crate::hub::{now_secs, ConfigChange, ConfigEntry, ConfigOutcome, DeviceConfig};
use crate::text::ago;
use crate::vars::Scope;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use std::collections::{BTreeMap, BTreeSet};

/// Where: nothing for the whole fleet, or one of `--device`, `--selector`
/// (repeatable: every label must match), `--deployment`; `--app` narrows to
/// one app.
#[derive(Args, Debug, Clone, Default)]
pub struct ScopeArgs {
    /// One device.
    #[arg(long, conflicts_with_all = ["selector", "deployment"])]
    pub device: Option<String>,
    /// Devices with this label (KEY=VALUE); repeat to require several.
    #[arg(long, conflicts_with = "deployment")]
    pub selector: Vec<String>,
    /// The devices a deployment gives apps to (its app-level values are the
    /// `env` table of its file).
    #[arg(long)]
    pub deployment: Option<String>,
    /// Only this app.
    #[arg(long)]
    pub app: Option<String>,
}

impl ScopeArgs {
    pub fn scope(&self) -> Result<Scope> {
        let mut selector = BTreeMap::new();
        for s in &self.selector {
            let (k, v) = s
                .split_once('=')
                .with_context(|| format!("--selector {s:?} must be KEY=VALUE"))?;
            if selector.insert(k.to_string(), v.to_string()).is_some() {
                bail!("--selector names label {k:?} twice");
            }
        }
        Ok(Scope {
            device: self.device.clone(),
            selector,
            deployment: self.deployment.clone(),
            app: self.app.clone(),
        })
    }

    fn is_fleet(&self) -> bool {
        self.device.is_none()
            && self.selector.is_empty()
            && self.deployment.is_none()
            && self.app.is_none()
    }
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Set variables (KEY=VALUE ...) at a scope; only the apps whose
    /// environment changes are restarted.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(required = true, value_name = "KEY=VALUE")]
        vars: Vec<String>,
    },
    /// Remove variables (KEY ...) from a scope; a less specific value, if
    /// any, applies again.
    Unset {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// The variables set (all, or at one scope); with `--device`, what every
    /// app on that device gets and from which level.
    List {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// `config list`: one row per variable.
pub fn table(entries: &[ConfigEntry], now: u64) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.scope_text.clone(),
                e.key.clone(),
                e.value.clone(),
                format!("{} by {}", ago(e.updated_at, now), e.updated_by),
            ]
        })
        .collect();
    crate::text::table(&["SCOPE", "KEY", "VALUE", "UPDATED"], &rows, &[])
}

/// `config list --device`: every app's variables with where they come from.
pub fn device_table(c: &DeviceConfig) -> String {
    let rows: Vec<Vec<String>> = c
        .apps
        .iter()
        .flat_map(|a| {
            a.vars
                .iter()
                .map(move |(k, r)| vec![a.app.clone(), k.clone(), r.value.clone(), r.from.clone()])
        })
        .collect();
    if rows.is_empty() {
        return format!("device {} runs no app with configuration\n", c.device);
    }
    crate::text::table(&["APP", "KEY", "VALUE", "FROM"], &rows, &[])
}

fn print_outcome(out: &ConfigOutcome, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(out)?);
    } else if out.changed.is_empty() {
        println!("{}: nothing changed", out.scope_text);
    } else {
        println!(
            "{}: {} changed; {} device(s) get a new manifest",
            out.scope_text,
            out.changed.join(", "),
            out.updated.len()
        );
    }
    Ok(())
}

pub async fn run(cmd: ConfigCommand, c: &ApiClient, json: bool) -> Result<()> {
    match cmd {
        ConfigCommand::Set { scope, vars } => {
            let mut set = BTreeMap::new();
            for kv in &vars {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("{kv:?} must be KEY=VALUE"))?;
                if set.insert(k.to_string(), v.to_string()).is_some() {
                    bail!("{k:?} is given twice");
                }
            }
            let change = ConfigChange {
                scope: scope.scope()?,
                set,
                unset: BTreeSet::new(),
            };
            let out: ConfigOutcome = c.call(Method::PATCH, "/v1/config", Some(&change)).await?;
            print_outcome(&out, json)?;
        }
        ConfigCommand::Unset { scope, keys } => {
            let change = ConfigChange {
                scope: scope.scope()?,
                set: BTreeMap::new(),
                unset: keys.into_iter().collect(),
            };
            let out: ConfigOutcome = c.call(Method::PATCH, "/v1/config", Some(&change)).await?;
            print_outcome(&out, json)?;
        }
        ConfigCommand::List { scope } => {
            if let (Some(device), None) = (&scope.device, &scope.app) {
                let cfg: DeviceConfig = c.get(&format!("/v1/devices/{device}/config")).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&cfg)?);
                } else {
                    print!("{}", device_table(&cfg));
                }
                return Ok(());
            }
            let mut all: Vec<ConfigEntry> = c.get("/v1/config").await?;
            if !scope.is_fleet() {
                let want = scope.scope()?;
                all.retain(|e| e.scope == want);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", table(&all, now_secs()));
            }
        }
    }
    Ok(())
}
