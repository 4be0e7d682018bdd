//! Leader work (portico-controller) wired into a replica: the Lease, reconciling, status.

use std::sync::Arc;
use std::time::Duration;

use portico_controller::{Controller, ControllerConfig, ControllerStatus};
use portico_model::Settings;
use portico_raft::Replica;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::run::{RunArgs, parse_key};
use crate::state::ReplicaState;

pub struct Leader {
    controller: Controller,
}

/// The controller's configuration from the command line; checked, so a bad flag fails the
/// start rather than the controller later.
pub fn config(args: &RunArgs, settings: Settings) -> anyhow::Result<ControllerConfig> {
    let mut config = ControllerConfig::new(
        args.namespace.clone(),
        portico_controller::boot_identity(&args.pod_name),
    );
    config.lease_name = args.lease_name.clone();
    let seconds = |flag: &str, value: f64| {
        Duration::try_from_secs_f64(value).map_err(|e| anyhow::anyhow!("--{flag} {value}: {e}"))
    };
    config.lease_duration = seconds("lease-duration-seconds", args.lease_duration_seconds)?;
    config.renew_deadline = seconds("renew-deadline-seconds", args.renew_deadline_seconds)?;
    config.retry_period = seconds("retry-period-seconds", args.retry_period_seconds)?;
    config.settings = settings;
    config.publish_status_addresses = args.publish_status_address.clone();
    config.watch_namespaces = args.watch_namespaces.iter().cloned().collect();
    config.limits = portico_model::Limits {
        max_object_bytes: args.max_object_bytes,
        max_namespace_bytes: args.max_namespace_bytes,
        max_namespace_objects: args.max_namespace_objects,
    };
    if let Some(service) = &args.publish_service {
        let key = parse_key(service).map_err(|e| e.context("--publish-service"))?;
        config.publish_service = Some((key.namespace.to_string(), key.name.to_string()));
    }
    config.validate()?;
    Ok(config)
}

impl Leader {
    pub fn new(
        config: ControllerConfig,
        client: kube::Client,
        replica: Replica,
        registry: &mut Registry,
    ) -> Self {
        Self {
            controller: Controller::new(config, client, replica, registry),
        }
    }

    /// Runs until `stop` is cancelled; returns after the Lease is released. The controller's
    /// state is mirrored into `state` for `/readyz`.
    pub fn spawn(
        self,
        stop: CancellationToken,
        state: Arc<ReplicaState>,
    ) -> JoinHandle<anyhow::Result<()>> {
        let mut status = self.controller.status();
        state.set_controller(describe(&status.borrow()));
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let s = status.borrow_and_update().clone();
                tracing::info!(leader = s.is_leader, epoch = ?s.epoch, last_error = ?s.last_error, "controller status");
                state.set_controller(describe(&s));
            }
        });
        tokio::spawn(async move {
            self.controller.run(stop).await?;
            Ok(())
        })
    }
}

/// One line for `/readyz`: the role, and why the last leadership ended abnormally.
fn describe(status: &ControllerStatus) -> String {
    let role = match (status.is_leader, status.epoch) {
        (true, Some(epoch)) => format!("leader (epoch {epoch})"),
        (true, None) => "leader".to_owned(),
        (false, _) => "follower".to_owned(),
    };
    match &status.last_error {
        Some(why) => format!("{role}; last leadership ended: {why}"),
        None => role,
    }
}
