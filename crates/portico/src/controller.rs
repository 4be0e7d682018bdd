//! Leader work (portico-controller) wired into a replica: the Lease, reconciling, status.

use portico_controller::{Controller, ControllerConfig};
use portico_model::Settings;
use portico_raft::Replica;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::run::{RunArgs, parse_key};

pub struct Leader {
    controller: Controller,
}

impl Leader {
    pub fn new(
        args: &RunArgs,
        settings: Settings,
        client: kube::Client,
        replica: Replica,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        let mut config = ControllerConfig::new(
            args.namespace.clone(),
            portico_controller::boot_identity(&args.pod_name),
        );
        config.lease_name = args.lease_name.clone();
        config.settings = settings;
        config.publish_status_addresses = args.publish_status_address.clone();
        if let Some(service) = &args.publish_service {
            let key = parse_key(service).map_err(|e| e.context("--publish-service"))?;
            config.publish_service = Some((key.namespace.to_string(), key.name.to_string()));
        }
        Ok(Self {
            controller: Controller::new(config, client, replica, registry),
        })
    }

    /// Runs until `stop` is cancelled; returns after the Lease is released.
    pub fn spawn(self, stop: CancellationToken) -> JoinHandle<anyhow::Result<()>> {
        let mut status = self.controller.status();
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let s = status.borrow_and_update().clone();
                tracing::info!(leader = s.is_leader, epoch = ?s.epoch, last_error = ?s.last_error, "controller status");
            }
        });
        tokio::spawn(async move {
            self.controller.run(stop).await?;
            Ok(())
        })
    }
}
