//! What the HTTP handlers and the scheduler share, built once from the configuration.

use std::sync::Arc;

use anyhow::anyhow;
use dr_common::reload::Reloading;
use prometheus_client::registry::Registry;

use crate::actions::proof::Prover;
use crate::audit::Audit;
use crate::config::Config;
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::remediation::Remediator;
use crate::retry::Retries;

pub struct App {
    pub remediator: Arc<Remediator>,
    pub gate: Arc<Gate>,
    /// Alerts skipped as busy, tried again.
    pub retries: Arc<Retries>,
    /// This replica's name in the etcd lock's owner key.
    pub identity: String,
    /// The bearer token `/webhook` and `/actions` want; `None` leaves them open.
    pub webhook_token: Option<Arc<Reloading<String>>>,
    /// HTTPS on the listener when set.
    pub listener_tls: Option<Arc<Reloading<rustls::ServerConfig>>>,
    /// Proves the stores' snapshots restorable; `None` without a store.
    pub prover: Option<Arc<Prover>>,
}

impl App {
    pub fn new(config: Config, registry: &mut Registry) -> anyhow::Result<Arc<Self>> {
        let audit = Arc::new(Audit::open(&config.snapshots.dir)?);
        let metrics = Metrics::register(registry);
        if let Some(token) = &config.webhook_token {
            token.count_into(&metrics.reloads);
        }
        if let Some(tls) = &config.tls {
            tls.count_into(&metrics.reloads);
        }
        if let Some(tls) = &config.listener_tls {
            tls.count_into(&metrics.reloads);
        }
        let gate = Gate::new(&config, audit.clone())
            .map_err(|err| anyhow!("building the HTTP client: {err}"))?;
        let gate = Arc::new(gate);
        let prover = config.proof.clone().map(|settings| {
            Arc::new(Prover::new(
                config.snapshots.stores(),
                settings,
                audit.clone(),
            ))
        });
        let remediator = Arc::new(Remediator {
            access: config.etcd_access(),
            snapshots: config.snapshots,
            defrag_timeout: config.defrag_timeout,
            health_wait: config.health_wait,
            restore: config.restore,
            dry_run: config.dry_run,
            audit,
            metrics,
        });
        let retries = Retries::new(
            config.retry,
            gate.clone(),
            remediator.clone(),
            config.alertmanager_url,
        )
        .map_err(|err| anyhow!("building the HTTP client: {err}"))?;
        Ok(Arc::new(App {
            remediator,
            gate,
            retries: Arc::new(retries),
            identity: config.identity,
            webhook_token: config.webhook_token,
            listener_tls: config.listener_tls,
            prover,
        }))
    }
}
