//! Against a real kube-apiserver and etcd (tests/kube's kube-testenv, built by
//! tests/kube/build.sh; see common/real_apiserver.rs), one module per subject: kubectl's
//! protobuf bodies, deploy/ applied client-side, server-side and as a server dry run, the test
//! tool's own stop/restart and compaction, a `portico run` replica running as deploy/'s
//! ServiceAccount (each RBAC rule shown to be needed), and `portico local --kubeconfig`.

#[path = "../common/mod.rs"]
mod common;

mod control;
mod controller_suite;
mod deploy;
mod differential;
mod explain;
mod kubectl_create;
mod local;
mod namespaced;
mod raft_pki_issuer;
mod raft_rotation;
mod replica;
mod support;
mod tenant_attacks;
mod validation;

use std::path::Path;
use std::process::{Command, Output};

pub use common::deploy_rbac::{deploy_dir, ok};
use common::real_apiserver::RealApiServer;

const PORTICO: &str = env!("CARGO_BIN_EXE_portico");

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub use common::host_ip;

pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn apply_yaml(api: &RealApiServer, dir: &Path, name: &str, yaml: &str) {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    ok(api
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&file));
}
