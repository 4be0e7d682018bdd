//! Raw HTTP requests through the in-process service: wire formats (watch frames, bookmarks,
//! Status bodies), bad input, the admin endpoint and namespace deletion.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use portico_apiserver::{ApiServer, ApiService};
use portico_test_support::wait_for;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(
    svc: &ApiService,
    method: Method,
    uri: &str,
    content_type: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(svc: &ApiService, uri: &str) -> (StatusCode, Value) {
    call(svc, Method::GET, uri, "application/json", Bytes::new()).await
}

async fn post(svc: &ApiService, uri: &str, body: Value) -> (StatusCode, Value) {
    call(svc, Method::POST, uri, "application/json", body.to_string()).await
}

/// Reads watch frames (JSON lines) until `count` frames or the timeout.
async fn watch_frames(svc: &ApiService, uri: &str, count: usize) -> (StatusCode, Vec<Value>) {
    watch_frames_telling(svc, uri, count, |_| {}).await
}

/// [`watch_frames`], calling `on_frame` with each frame as it arrives: the signal that the
/// watch is open, for a test that acts on open watches.
async fn watch_frames_telling(
    svc: &ApiService,
    uri: &str,
    count: usize,
    mut on_frame: impl FnMut(&Value),
) -> (StatusCode, Vec<Value>) {
    let req = Request::builder()
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    while frames.len() < count {
        let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(30), body.frame()).await
        else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let frame = serde_json::from_slice(&line).unwrap();
            on_frame(&frame);
            frames.push(frame);
        }
    }
    (status, frames)
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn bad_input_gets_status_errors_never_a_crash() {
    let server = ApiServer::builder().build().unwrap();
    let svc = server.service();
    let cases: Vec<(Method, &str, &str, Bytes, u16, &str)> = vec![
        (
            Method::POST,
            CMS,
            "application/json",
            Bytes::from_static(b"{not json"),
            400,
            "BadRequest",
        ),
        (
            Method::POST,
            CMS,
            "application/json",
            Bytes::from_static(b"[1,2]"),
            400,
            "BadRequest",
        ),
        (
            Method::POST,
            CMS,
            "application/json",
            Bytes::from(json!({"metadata": {"name": "x"}, "data": {"k": 1}}).to_string()),
            400,
            "BadRequest",
        ),
        (
            Method::POST,
            CMS,
            "application/json",
            Bytes::from(json!({"metadata": {"name": "Bad_Name"}}).to_string()),
            422,
            "Invalid",
        ),
        (
            Method::POST,
            CMS,
            "application/json",
            Bytes::from(json!({"kind": "Secret", "metadata": {"name": "x"}}).to_string()),
            400,
            "BadRequest",
        ),
        (
            Method::POST,
            CMS,
            "application/json",
            Bytes::from(vec![b' '; 4 * 1024 * 1024]),
            413,
            "RequestEntityTooLarge",
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/x",
            "text/plain",
            Bytes::from_static(b"{}"),
            415,
            "UnsupportedMediaType",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/default/widgets",
            "application/json",
            Bytes::new(),
            404,
            "NotFound",
        ),
        (
            Method::GET,
            "/apis/nope.example.com/v1",
            "application/json",
            Bytes::new(),
            404,
            "NotFound",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/default/configmaps?labelSelector=a%20b%20c",
            "application/json",
            Bytes::new(),
            400,
            "BadRequest",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=abc",
            "application/json",
            Bytes::new(),
            400,
            "BadRequest",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/default/configmaps?limit=1&continue=garbage",
            "application/json",
            Bytes::new(),
            400,
            "BadRequest",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/default/configmaps/x/status",
            "application/json",
            Bytes::new(),
            404,
            "NotFound",
        ),
    ];
    for (method, uri, ct, body, code, reason) in cases {
        let (status, value) = call(&svc, method.clone(), uri, ct, body).await;
        assert_eq!(status.as_u16(), code, "{method} {uri}: {value}");
        assert_eq!(value["kind"], "Status", "{value}");
        assert_eq!(value["reason"], reason, "{value}");
        assert_eq!(value["code"], code);
    }
    // Still serving.
    let (status, _) = get(&svc, "/version").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn watch_frames_bookmarks_and_in_stream_410() {
    let server = ApiServer::builder()
        .watch_window(3)
        .bookmark_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let svc = server.service();
    let (_, first) = post(&svc, CMS, json!({"metadata": {"name": "a"}})).await;
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // From the current state: ADDED, then a bookmark with apiVersion and kind.
    let (status, frames) = watch_frames(
        &svc,
        &format!("{CMS}?watch=true&allowWatchBookmarks=true"),
        2,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(frames[0]["type"], "ADDED");
    assert_eq!(frames[0]["object"]["metadata"]["name"], "a");
    assert_eq!(frames[1]["type"], "BOOKMARK");
    assert_eq!(frames[1]["object"]["kind"], "ConfigMap");
    assert_eq!(frames[1]["object"]["apiVersion"], "v1");

    // Streaming list: initial events end with an annotated bookmark.
    let (_, frames) = watch_frames(&svc, &format!("{CMS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"), 2).await;
    assert_eq!(frames[1]["type"], "BOOKMARK");
    assert_eq!(
        frames[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // Compacted: HTTP 200 with an ERROR frame carrying 410 Expired.
    for i in 0..5 {
        post(&svc, CMS, json!({"metadata": {"name": format!("b{i}")}})).await;
    }
    let (status, frames) =
        watch_frames(&svc, &format!("{CMS}?watch=true&resourceVersion={rv}"), 1).await;
    assert_eq!(status, 200);
    assert_eq!(frames[0]["type"], "ERROR");
    assert_eq!(frames[0]["object"]["code"], 410);
    assert_eq!(frames[0]["object"]["reason"], "Expired");

    // Label selector transitions become ADDED / DELETED.
    let now = server.store().current_rv();
    let sel = format!("{CMS}?watch=true&labelSelector=x%3Dy&resourceVersion={now}");
    // The watch starts at resourceVersion `now`: the patches below reach it whenever it is
    // registered, so nothing has to wait for it.
    let watcher = tokio::spawn({
        let svc = svc.clone();
        async move { watch_frames(&svc, &sel, 2).await }
    });
    let merge = "application/merge-patch+json";
    call(
        &svc,
        Method::PATCH,
        &format!("{CMS}/a"),
        merge,
        json!({"metadata": {"labels": {"x": "y"}}}).to_string(),
    )
    .await;
    call(
        &svc,
        Method::PATCH,
        &format!("{CMS}/a"),
        merge,
        json!({"metadata": {"labels": {"x": "z"}}}).to_string(),
    )
    .await;
    let (_, frames) = watcher.await.unwrap();
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "DELETED"]);
}

#[tokio::test]
async fn admin_endpoint_switches_faults() {
    let server = ApiServer::builder().build().unwrap();
    let svc = server.service();
    let put = |body: Value| {
        call(
            &svc,
            Method::PUT,
            "/admin/faults",
            "application/json",
            body.to_string(),
        )
    };
    let (status, current) = put(json!({"availability": "unavailable"})).await;
    assert_eq!(
        (status.as_u16(), current["availability"].as_str()),
        (200, Some("unavailable"))
    );
    let (status, body) = get(&svc, CMS).await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    put(json!({"failWrite": {"nth": 1, "code": 500}})).await;
    let (status, _) = post(&svc, CMS, json!({"metadata": {"name": "a"}})).await;
    assert_eq!(status, 500);
    let (status, _) = post(&svc, CMS, json!({"metadata": {"name": "a"}})).await;
    assert_eq!(status, 201);
    put(json!({"expireNextWatch": true})).await;
    let (_, frames) = watch_frames(&svc, &format!("{CMS}?watch=true"), 1).await;
    assert_eq!(frames[0]["object"]["code"], 410);
    // drop-watches ends open streams: once the watch has sent its first frame (ADDED for
    // the ConfigMap), it is open.
    let (opened, mut first) = tokio::sync::mpsc::unbounded_channel();
    let w = tokio::spawn({
        let svc = svc.clone();
        async move {
            let uri = format!("{CMS}?watch=true");
            watch_frames_telling(&svc, &uri, 100, |f| drop(opened.send(f.clone()))).await
        }
    });
    let frame = wait_for(
        "the watch's first frame",
        Duration::from_secs(10),
        first.recv(),
    )
    .await
    .unwrap()
    .expect("a frame");
    assert_eq!(frame["type"], "ADDED", "{frame}");
    call(
        &svc,
        Method::POST,
        "/admin/faults/drop-watches",
        "application/json",
        Bytes::new(),
    )
    .await;
    let (_, frames) = wait_for("the dropped watch to end", Duration::from_secs(10), w)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let (status, _) = call(
        &svc,
        Method::PUT,
        "/admin/faults",
        "application/json",
        "nonsense",
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn namespace_deletion_removes_its_objects_and_dry_run_changes_nothing() {
    let server = ApiServer::builder().build().unwrap();
    let svc = server.service();
    let (status, _) = post(
        &svc,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "team"}}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = post(
        &svc,
        "/api/v1/namespaces/team/configmaps",
        json!({"metadata": {"name": "c"}}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, dry) = post(
        &svc,
        "/api/v1/namespaces/team/configmaps?dryRun=All",
        json!({"metadata": {"name": "d"}}),
    )
    .await;
    assert_eq!(
        (status.as_u16(), dry["metadata"]["name"].as_str()),
        (201, Some("d"))
    );
    let (status, _) = get(&svc, "/api/v1/namespaces/team/configmaps/d").await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &svc,
        Method::DELETE,
        "/api/v1/namespaces/team",
        "application/json",
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(&svc, "/api/v1/namespaces/team/configmaps/c").await;
    assert_eq!(status, 404);
    let (status, body) = post(
        &svc,
        "/api/v1/namespaces/team/configmaps",
        json!({"metadata": {"name": "c"}}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn unknown_fields_warn_by_default_and_fail_when_strict() {
    let server = ApiServer::builder().build().unwrap();
    let svc = server.service();
    let body = json!({"metadata": {"name": "w"}, "data": {"k": "v"}, "bogus": 1});
    let req = Request::builder()
        .method(Method::POST)
        .uri(CMS)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 201);
    let warning = resp
        .headers()
        .get("warning")
        .expect("a Warning header")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(warning, r#"299 - "unknown field \"bogus\"""#);
    let stored = resp.into_body().collect().await.unwrap().to_bytes();
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    assert!(
        stored.get("bogus").is_none(),
        "unknown fields are dropped: {stored}"
    );
    let body = json!({"metadata": {"name": "s"}, "bogus": 1});
    let (status, err) = post(&svc, &format!("{CMS}?fieldValidation=Strict"), body).await;
    assert_eq!(status, 400);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"bogus\""),
        "{err}"
    );
}
