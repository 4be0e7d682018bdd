//! OpenAPI v3 documents, generated from the registry, with what kubectl reads from them:
//!
//! - kubectl's validation (`--validate=strict`, the default) asks `/openapi/v3` whether the PATCH
//!   operation of a kind takes the `fieldValidation` parameter; since ours does, kubectl leaves
//!   validation to the server (strict decoding in [`crate::objects`]) instead of validating
//!   client-side against an OpenAPI v2 schema;
//! - client-side `kubectl apply` looks up the kind's schema for strategic-merge metadata; we
//!   publish no component schemas, so it uses its compiled-in Go types for these built-in
//!   kinds, which carry the same merge keys as the real schemas.
//!
//! `/openapi/v2` answers 404, as on servers that disabled it; kubectl 1.27–1.33 then rely on v3.

use bytes::Bytes;
use http::{Request, Response};
use serde_json::{Map, Value, json};

use crate::http::{ResponseBody, error_response};
use crate::registry::{self, RESOURCES, ResourceInfo};

const HASH: &str = "7f3c1a0e9b2d4c6a8e0f1b3d5c7e9a1b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1f";

pub fn v2_response(_req: &Request<Bytes>) -> Response<ResponseBody> {
    error_response(&crate::error::ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    ))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the per-group-version document index.
pub fn v3_index() -> Value {
    let mut paths = Map::new();
    for (g, v) in registry::group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={HASH}")}),
        );
    }
    json!({"paths": paths})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(info: &ResourceInfo, action: &str, op_id: String, write: bool) -> Value {
    let mut params = vec![query_param(
        "pretty",
        "If 'true', then the output is pretty printed.",
    )];
    if write {
        params.push(query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ));
        params.push(query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."));
        params.push(query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."));
    }
    if action == "patch" {
        params.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    if matches!(action, "list" | "deletecollection") {
        for p in [
            "continue",
            "fieldSelector",
            "labelSelector",
            "limit",
            "resourceVersion",
            "resourceVersionMatch",
            "sendInitialEvents",
            "timeoutSeconds",
            "watch",
            "allowWatchBookmarks",
        ] {
            params.push(query_param(p, p));
        }
    }
    json!({
        "operationId": op_id,
        "parameters": params,
        "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": info.group, "version": info.version, "kind": info.kind},
    })
}

fn op_name(info: &ResourceInfo) -> String {
    let group: String = info
        .group
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    let version = format!(
        "{}{}",
        info.version[..1].to_ascii_uppercase(),
        &info.version[1..]
    );
    if group.is_empty() {
        format!("Core{version}")
    } else {
        format!("{group}{version}")
    }
}

/// `/openapi/v3/{api/v1 | apis/group/version}`.
pub fn v3_document(path: &str) -> Option<Value> {
    let (group, version) = registry::group_versions()
        .into_iter()
        .find(|(g, v)| gv_path(g, v) == path)?;
    let mut paths = Map::new();
    for info in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = format!("/{}", gv_path(group, version));
        let scope = if info.namespaced { "Namespaced" } else { "" };
        let gv = op_name(info);
        let (collection, item) = if info.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", info.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", info.plural),
            )
        } else {
            (
                format!("{base}/{}", info.plural),
                format!("{base}/{}/{{name}}", info.plural),
            )
        };
        let k = info.kind;
        paths.insert(collection, json!({
            "get": operation(info, "list", format!("list{gv}{scope}{k}"), false),
            "post": operation(info, "post", format!("create{gv}{scope}{k}"), true),
            "delete": operation(info, "deletecollection", format!("deletecollection{gv}{scope}{k}"), true),
        }));
        paths.insert(
            item.clone(),
            json!({
                "get": operation(info, "get", format!("read{gv}{scope}{k}"), false),
                "put": operation(info, "put", format!("replace{gv}{scope}{k}"), true),
                "patch": operation(info, "patch", format!("patch{gv}{scope}{k}"), true),
                "delete": operation(info, "delete", format!("delete{gv}{scope}{k}"), true),
            }),
        );
        if info.has_status {
            paths.insert(
                format!("{item}/status"),
                json!({
                    "get": operation(info, "get", format!("read{gv}{scope}{k}Status"), false),
                    "put": operation(info, "put", format!("replace{gv}{scope}{k}Status"), true),
                    "patch": operation(info, "patch", format!("patch{gv}{scope}{k}Status"), true),
                }),
            );
        }
        if info.namespaced {
            paths.insert(
                format!("{base}/{}", info.plural),
                json!({
                    "get": operation(info, "list", format!("list{gv}{k}ForAllNamespaces"), false),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
