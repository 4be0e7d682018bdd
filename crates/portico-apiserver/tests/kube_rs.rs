//! kube-rs's client and runtime against the server, in-process (tower service) and over HTTP.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher};
use kube::{Client, ResourceExt};
use portico_apiserver::ApiServer;
use portico_test_support::poll_until;
use serde_json::json;
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(60);

fn server() -> ApiServer {
    ApiServer::builder()
        .bookmark_interval(Duration::from_millis(200))
        .build()
        .unwrap()
}

fn client(server: &ApiServer) -> Client {
    Client::new(server.service(), "default")
}

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": value}})).unwrap()
}

fn rv(obj: &impl ResourceExt) -> u64 {
    obj.resource_version().unwrap().parse().unwrap()
}

/// Runs a `kube_runtime::watcher` and forwards its events (errors included) to a channel.
fn spawn_watcher(
    api: Api<ConfigMap>,
) -> mpsc::UnboundedReceiver<Result<watcher::Event<ConfigMap>, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            if tx.send(ev.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });
    rx
}

async fn until_init_done(
    rx: &mut mpsc::UnboundedReceiver<Result<watcher::Event<ConfigMap>, String>>,
) {
    loop {
        match tokio::time::timeout(LONG, rx.recv())
            .await
            .expect("watcher initialises")
            .unwrap()
        {
            Ok(watcher::Event::InitDone) => return,
            Ok(_) => {}
            Err(e) => panic!("watcher error during init: {e}"),
        }
    }
}

#[tokio::test]
async fn crud_and_errors_through_the_tower_service() {
    let server = server();
    let api: Api<Ingress> = Api::default_namespaced(client(&server));
    let ing: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &ing).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.uid().is_some() && created.metadata.creation_timestamp.is_some());

    let err = api.create(&PostParams::default(), &ing).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );

    let mut bad = ing.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.as_mut().unwrap().rules.as_mut().unwrap()[0]
        .http
        .as_mut()
        .unwrap()
        .paths[0]
        .path = Some("relative".into());
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.contains("spec.rules[0].http.paths[0].path"),
        "{}",
        status.message
    );

    // A status write leaves spec alone; a spec write keeps status and bumps generation.
    let mut with_status = created.clone();
    with_status.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}})).unwrap(),
    );
    with_status.spec.as_mut().unwrap().ingress_class_name = Some("sneaky".into());
    let after = api
        .replace_status("web", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(after.spec.as_ref().unwrap().ingress_class_name, None);
    assert_eq!(after.metadata.generation, Some(1));
    let mut changed = after.clone();
    changed.spec.as_mut().unwrap().ingress_class_name = Some("portico".into());
    changed.status = None;
    let replaced = api
        .replace("web", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(
        replaced
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("10.0.0.1")
    );

    // Stale resourceVersion on PUT.
    let err = api
        .replace("web", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    // Missing namespace, missing object.
    let other: Api<ConfigMap> = Api::namespaced(client(&server), "nope");
    let err = other
        .create(&PostParams::default(), &cm("x", "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
    assert!(api.get_opt("missing").await.unwrap().is_none());

    api.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("web").await.unwrap().is_none());
}

#[tokio::test]
async fn list_selectors_and_pagination() {
    let server = server();
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server));
    for i in 0..25 {
        let mut c = cm(&format!("c{i:02}"), "x");
        c.metadata.labels = Some(BTreeMap::from([(
            "parity".to_string(),
            if i % 2 == 0 { "even" } else { "odd" }.to_string(),
        )]));
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    let even = api
        .list(&ListParams::default().labels("parity=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 13);
    let one = api
        .list(&ListParams::default().fields("metadata.name=c07"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    // Pages are consistent at the first page's resourceVersion even when writes interleave.
    let first = api.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    api.create(&PostParams::default(), &cm("a-late", "x"))
        .await
        .unwrap();
    let mut names: Vec<String> = first.items.iter().map(|c| c.name_any()).collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        names.extend(page.items.iter().map(|c| c.name_any()));
        token = page.metadata.continue_.clone();
    }
    assert_eq!(names.len(), 25);
    assert!(!names.contains(&"a-late".to_string()));
}

#[tokio::test]
async fn reflector_follows_create_update_delete() {
    let server = server();
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()));
    tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();

    for i in 0..20 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), "0"))
            .await
            .unwrap();
    }
    for i in 0..20 {
        api.replace(&format!("c{i}"), &PostParams::default(), &{
            let mut c = api.get(&format!("c{i}")).await.unwrap();
            c.data = Some(BTreeMap::from([("v".to_string(), "1".to_string())]));
            c
        })
        .await
        .unwrap();
    }
    for i in 0..10 {
        api.delete(&format!("c{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let expected: BTreeMap<String, String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| (c.name_any(), c.resource_version().unwrap()))
        .collect();
    // The reflector's store offers nothing to subscribe to: poll it.
    let state = || -> BTreeMap<String, String> {
        reader
            .state()
            .iter()
            .map(|c| (c.name_any(), c.resource_version().unwrap()))
            .collect()
    };
    poll_until("the reflector to hold every version", LONG, || {
        std::future::ready((state() == expected).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?} vs {expected:?}", state()));
    assert_eq!(expected.len(), 10);
}

#[tokio::test]
async fn watcher_resumes_after_dropped_watches_without_duplicates_or_gaps() {
    let server = server();
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let mut rx = spawn_watcher(api.clone());
    until_init_done(&mut rx).await;

    let mut written = Vec::new();
    for i in 0..60 {
        let name = format!("c{}", i % 7);
        let obj = match api.get_opt(&name).await.unwrap() {
            None => api
                .create(&PostParams::default(), &cm(&name, "0"))
                .await
                .unwrap(),
            Some(mut c) => {
                c.data = Some(BTreeMap::from([("v".to_string(), i.to_string())]));
                api.replace(&name, &PostParams::default(), &c)
                    .await
                    .unwrap()
            }
        };
        written.push(rv(&obj));
        if i % 10 == 5 {
            server.faults().drop_watches();
        }
        if i % 10 == 9 {
            let last = api.delete(&name, &DeleteParams::default()).await.unwrap();
            let _ = last;
            written.push(server.store().current_rv());
        }
    }
    let last = *written.last().unwrap();
    let mut seen = Vec::new();
    while seen.last().copied() != Some(last) {
        match tokio::time::timeout(LONG, rx.recv())
            .await
            .expect("watcher delivers every event")
            .unwrap()
        {
            Ok(watcher::Event::Apply(c) | watcher::Event::Delete(c)) => seen.push(rv(&c)),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone) => {
                panic!("the watcher relisted instead of resuming")
            }
            Err(e) => panic!("watcher error: {e}"),
        }
    }
    assert_eq!(seen, written, "every write seen once, in order");
}

#[tokio::test]
async fn forced_410_makes_the_watcher_relist_and_resync() {
    let server = server();
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let (reader, writer) = reflector::store();
    let (tx, mut inits) = mpsc::unbounded_channel();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()));
    tokio::spawn(stream.for_each(move |ev| {
        if matches!(ev, Ok(watcher::Event::Init)) {
            let _ = tx.send(());
        }
        async {}
    }));
    tokio::time::timeout(LONG, inits.recv())
        .await
        .unwrap()
        .unwrap();
    reader.wait_until_ready().await.unwrap();
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), "0"))
            .await
            .unwrap();
    }
    server.faults().expire_next_watch();
    server.faults().drop_watches();
    tokio::time::timeout(LONG, inits.recv())
        .await
        .expect("a relist after the 410")
        .unwrap();
    for i in 5..10 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), "0"))
            .await
            .unwrap();
    }
    api.delete("c0", &DeleteParams::default()).await.unwrap();
    let names = || -> HashSet<String> { reader.state().iter().map(|c| c.name_any()).collect() };
    poll_until("the reflector to resync without c0", LONG, || {
        let names = names();
        std::future::ready((names.len() == 9 && !names.contains("c0")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", names()));
}

#[tokio::test]
async fn watch_from_a_compacted_version_gets_an_in_stream_410() {
    let server = ApiServer::builder().watch_window(5).build().unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let first = api
        .create(&PostParams::default(), &cm("c", "0"))
        .await
        .unwrap();
    for i in 0..10 {
        api.create(&PostParams::default(), &cm(&format!("d{i}"), "0"))
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default(), &first.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(LONG, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn the_loser_of_two_concurrent_updates_gets_409() {
    let server = server();
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let base = api
        .create(&PostParams::default(), &cm("race", "0"))
        .await
        .unwrap();
    for round in 0..10 {
        let current = api.get("race").await.unwrap();
        let (a, b) = (api.clone(), api.clone());
        let (mut ca, mut cb) = (current.clone(), current.clone());
        ca.data = Some(BTreeMap::from([("v".to_string(), format!("a{round}"))]));
        cb.data = Some(BTreeMap::from([("v".to_string(), format!("b{round}"))]));
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.replace("race", &PostParams::default(), &ca).await }),
            tokio::spawn(async move { b.replace("race", &PostParams::default(), &cb).await }),
        );
        let results = [ra.unwrap(), rb.unwrap()];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results.iter().filter(|r| matches!(r, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict")).count();
        assert_eq!((wins, conflicts), (1, 1), "{results:?}");
    }
    assert!(rv(&api.get("race").await.unwrap()) > rv(&base));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_see_every_event_in_order() {
    let server = server();
    let client = client(&server);
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let start = server.store().current_rv().to_string();
    const WATCHERS: usize = 20;
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 75;
    let total = WRITERS * PER_WRITER;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let api = api.clone();
        let start = start.clone();
        let mut stream = api
            .watch(&WatchParams::default(), &start)
            .await
            .unwrap()
            .boxed();
        watchers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < total {
                match tokio::time::timeout(LONG, stream.try_next())
                    .await
                    .expect("event in time")
                    .unwrap()
                {
                    Some(WatchEvent::Added(c) | WatchEvent::Modified(c)) => seen.push(rv(&c)),
                    Some(WatchEvent::Bookmark(_)) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            seen
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let api = api.clone();
        writers.push(tokio::spawn(async move {
            let mut rvs = Vec::new();
            for i in 0..PER_WRITER {
                let name = format!("w{w}-{}", i % 5);
                let obj = if i < 5 {
                    api.create(&PostParams::default(), &cm(&name, "0"))
                        .await
                        .unwrap()
                } else {
                    let patch = kube::api::Patch::Merge(json!({"data": {"v": i.to_string()}}));
                    api.patch(&name, &kube::api::PatchParams::default(), &patch)
                        .await
                        .unwrap()
                };
                rvs.push(rv(&obj));
            }
            rvs
        }));
    }
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    written.sort_unstable();
    for w in watchers {
        let seen = w.await.unwrap();
        assert_eq!(
            seen, written,
            "a watcher missed, repeated or reordered events"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_over_http_from_the_kubeconfig() {
    let server = server();
    let handle = server
        .serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&handle.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.minor, "33");
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let (reader, writer) = reflector::store();
    tokio::spawn(
        reflector(writer, watcher(api.clone(), watcher::Config::default())).for_each(|_| async {}),
    );
    reader.wait_until_ready().await.unwrap();
    api.create(&PostParams::default(), &cm("over-http", "1"))
        .await
        .unwrap();
    poll_until("the reflector to see over-http", LONG, || {
        std::future::ready((!reader.state().is_empty()).then_some(()))
    })
    .await
    .unwrap();
    // Faults through the admin endpoint: 503, then back to normal.
    let admin = format!("{}/admin/faults", handle.url());
    let put = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "PUT",
            "-d",
            r#"{"availability":"unavailable"}"#,
            &admin,
        ])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&put.stdout).contains("unavailable"));
    // (curl, not kube: kube's client retries 503s with backoff.)
    let get = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            &format!(
                "{}/api/v1/namespaces/default/configmaps/over-http",
                handle.url()
            ),
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&get.stdout);
    assert!(
        text.ends_with("\n503") && text.contains("ServiceUnavailable"),
        "{text}"
    );
    tokio::process::Command::new("curl")
        .args(["-sS", "-X", "POST", &format!("{admin}/reset")])
        .output()
        .await
        .unwrap();
    api.get("over-http").await.unwrap();
}

#[tokio::test]
async fn recorder_events_show_as_core_events_and_leases_guard_leadership() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    use k8s_openapi::api::events::v1::Event as NewEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};

    let server = server();
    let client = client(&server);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "portico".into(),
            instance: Some("portico-0".into()),
        },
    );
    let reference = ObjectReference {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("Ingress".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "Sync".into(),
        note: Some("routes updated".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    // events.k8s.io view: one event with a series of two.
    let new: Api<NewEvent> = Api::default_namespaced(client.clone());
    let listed = new.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1, "{:?}", listed.items);
    assert_eq!(listed.items[0].series.as_ref().map(|s| s.count), Some(2));
    // The same object as a core Event, as kubectl describe reads it.
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let listed = core
        .list(&ListParams::default().fields("involvedObject.kind=Ingress,involvedObject.name=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].message.as_deref(), Some("routes updated"));
    assert_eq!(
        listed.items[0].reporting_component.as_deref(),
        Some("portico")
    );

    // Leader election with a Lease: the second candidate's stale update loses with 409.
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "portico-leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})).unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut by_b = created.clone();
    by_b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let mut by_c = created.clone();
    by_c.spec.as_mut().unwrap().holder_identity = Some("c".into());
    leases
        .replace("portico-leader", &PostParams::default(), &by_b)
        .await
        .unwrap();
    let err = leases
        .replace("portico-leader", &PostParams::default(), &by_c)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    assert_eq!(
        leases
            .get("portico-leader")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn server_side_apply_of_status_by_a_controller() {
    use kube::api::{Patch, PatchParams};
    let server = server();
    let api: Api<Ingress> = Api::default_namespaced(client(&server));
    // Create by apply (absent object), as a GitOps tool would.
    let manifest = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}
    });
    let created = api
        .patch(
            "web",
            &PatchParams::apply("gitops"),
            &Patch::Apply(&manifest),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    // The controller owns status through the status subresource.
    let status = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                        "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}});
    let patched = api
        .patch_status(
            "web",
            &PatchParams::apply("portico").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let status_rv = patched.resource_version();
    assert_eq!(
        patched
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "status writes leave generation alone"
    );
    let managers: Vec<(String, Option<String>)> = patched
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.subresource))
        .collect();
    assert!(
        managers.contains(&("gitops".to_string(), None)),
        "{managers:?}"
    );
    assert!(
        managers.contains(&("portico".to_string(), Some("status".to_string()))),
        "{managers:?}"
    );
    // Re-applying the same manifest is a no-op: same resourceVersion.
    let again = api
        .patch(
            "web",
            &PatchParams::apply("gitops"),
            &Patch::Apply(&manifest),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), status_rv);
    assert_eq!(
        again
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn reflector_with_streaming_lists() {
    let server = server();
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server));
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("before{i}"), "0"))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().streaming_lists();
    tokio::spawn(reflector(writer, watcher(api.clone(), config)).for_each(|_| async {}));
    tokio::time::timeout(LONG, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.state().len(), 5);
    api.create(&PostParams::default(), &cm("after", "0"))
        .await
        .unwrap();
    api.delete("before0", &DeleteParams::default())
        .await
        .unwrap();
    let names = || -> HashSet<String> { reader.state().iter().map(|c| c.name_any()).collect() };
    poll_until("the reflector to see after and not before0", LONG, || {
        let names = names();
        let done = names.len() == 5 && names.contains("after") && !names.contains("before0");
        std::future::ready(done.then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", names()));
}
