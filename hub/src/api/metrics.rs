//! `GET /metrics`: reads the facts a scrape shows (store, publisher,
//! broker and ingest counters), cut down to the token's scope like
//! `/v1/stats`, and answers with `crate::metrics::render`'s text.

use super::views::{counts, DeviceSummary};
use super::{allow, internal, ApiState, AppError};
use crate::access::{Caller, Request as Access};
use crate::metrics::{self, DeviceFacts, Facts, HubCounters};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use std::sync::atomic::{AtomicU64, Ordering};

/// Any token may scrape (a viewer token is enough): what it sees about
/// devices and rollouts is its scope's, the hub's own counters are shown to
/// every token as in `/v1/stats`.
pub(super) async fn metrics(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, AppError> {
    allow(&s, &caller, Access::List).await?;
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let counters = HubCounters {
        ingest: Default::default(),
        manifests_published: load(&s.publish.manifests_published),
        republish_all: load(&s.publish.republish_all),
        publish_errors: load(&s.publish.publish_errors),
        watermarks_published: load(&s.publish.watermarks_published),
        broker_refused: s
            .broker
            .as_ref()
            .map(|r| (load(&r.logins), load(&r.topics))),
        ingest_backlog: load(&s.ingest.backlog),
    };
    let facts = tokio::task::spawn_blocking(move || -> Result<Facts, AppError> {
        let metas = store.manifest_metas()?;
        let statuses = store.statuses()?;
        let devices = store
            .devices()?
            .iter()
            .filter(|d| caller.sees_device(&d.labels))
            .map(|d| {
                let meta = metas.get(d.id.as_str());
                let status = statuses.get(d.id.as_str());
                let summary = DeviceSummary::new(d, meta, status, now);
                DeviceFacts {
                    state: summary.state(),
                    apps: status.map(|s| counts(&s.report)).unwrap_or_default(),
                    rejected: status
                        .map(|s| s.report.rejected.clone())
                        .unwrap_or_default(),
                    behind: crate::ingest::is_behind(
                        status.and_then(|s| s.report.applied),
                        meta.map(|m| (m.epoch, m.generation)),
                    ),
                    last_seen: summary.last_seen,
                }
            })
            .collect();
        let deployments = store.deployments()?;
        let visible: std::collections::BTreeSet<String> = deployments
            .iter()
            .filter(|d| caller.sees_deployment(&d.spec.selector))
            .map(|d| d.spec.name.clone())
            .collect();
        let mut rollouts = crate::hub::rollouts::views(&store, now)?;
        if !caller.scope.is_everything() {
            rollouts.retain(|r| visible.contains(&r.deployment));
        }
        Ok(Facts {
            now,
            devices,
            deployments: visible.len(),
            rollouts,
            counters: HubCounters {
                ingest: store.counters()?,
                ..counters
            },
        })
    })
    .await
    .map_err(internal)??;
    Ok((
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&facts),
    ))
}
