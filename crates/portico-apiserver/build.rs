//! Compiles the vendored Kubernetes `.proto` files (proto/, from k8s.io/api and
//! k8s.io/apimachinery v0.34.4) into one descriptor set, read at run time by `protobuf.rs`.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "k8s.io/api/apps/v1/generated.proto",
    "k8s.io/api/coordination/v1/generated.proto",
    "k8s.io/api/core/v1/generated.proto",
    "k8s.io/api/discovery/v1/generated.proto",
    "k8s.io/api/events/v1/generated.proto",
    "k8s.io/api/networking/v1/generated.proto",
    "k8s.io/api/policy/v1/generated.proto",
    "k8s.io/api/rbac/v1/generated.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let set = protox::compile(FILES, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("k8s.descriptor.bin");
    std::fs::write(out, prost::Message::encode_to_vec(&set))?;
    Ok(())
}
