//! A routing table from a file: a YAML manifest of Ingress, IngressClass, Service,
//! EndpointSlice and Secret objects (one or more documents, `kind: List` allowed), compiled
//! as the controller would. Lets the data plane run and be tested without a cluster.

use std::path::{Path, PathBuf};

use portico_model::convert::{ConvertError, resources_from_values};
use portico_model::{RoutingTable, Settings};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum TableFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{path}: {source}")]
    Convert { path: PathBuf, source: ConvertError },
}

/// Reads and compiles a manifest file.
pub fn load(path: &Path, settings: Settings) -> Result<RoutingTable, TableFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TableFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_yaml(&text, settings).map_err(|e| match e {
        FromYamlError::Yaml(source) => TableFileError::Yaml {
            path: path.to_owned(),
            source,
        },
        FromYamlError::Convert(source) => TableFileError::Convert {
            path: path.to_owned(),
            source,
        },
    })
}

#[derive(Debug, thiserror::Error)]
pub enum FromYamlError {
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error(transparent)]
    Convert(#[from] ConvertError),
}

/// Compiles a manifest given as text.
pub fn from_yaml(text: &str, settings: Settings) -> Result<RoutingTable, FromYamlError> {
    let mut values = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        values.push(serde_json::Value::deserialize(document)?);
    }
    let resources = resources_from_values(values.iter())?;
    Ok(RoutingTable::compile(settings, resources))
}
