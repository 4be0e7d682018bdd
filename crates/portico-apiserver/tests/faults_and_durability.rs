//! Fault injection through the Rust API, and state surviving a restart with a data directory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use portico_apiserver::{ApiServer, Availability};
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

fn api(server: &ApiServer) -> Api<ConfigMap> {
    Api::default_namespaced(Client::new(server.service(), "default"))
}

#[tokio::test]
async fn nth_write_fails_with_the_chosen_code_then_writes_work_again() {
    let server = ApiServer::builder().build().unwrap();
    let api = api(&server);
    server.faults().fail_nth_write(2, 409);
    api.create(&PostParams::default(), &cm("a")).await.unwrap();
    let err = api
        .create(&PostParams::default(), &cm("b"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    api.create(&PostParams::default(), &cm("b")).await.unwrap();

    server.faults().fail_nth_write(1, 500);
    let err = api.delete("a", &DeleteParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 500 && s.reason == "InternalError"),
        "{err}"
    );
    // Reads are not writes: they never consume the failure.
    server.faults().fail_nth_write(1, 500);
    api.get("a").await.unwrap();
    server.faults().reset();
    api.delete("a", &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn refuse_and_delay() {
    let server = ApiServer::builder().build().unwrap();
    let api = api(&server);
    server.faults().set_availability(Availability::Refuse);
    let err = api.get_opt("x").await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a refused request has no API answer: {err}"
    );
    server.faults().set_availability(Availability::Up);
    assert!(api.get_opt("x").await.unwrap().is_none());

    server.faults().set_delay(Duration::from_millis(300));
    let start = Instant::now();
    api.get_opt("x").await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    server.faults().reset();
}

#[tokio::test]
async fn state_survives_a_restart_with_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (uid, rv) = {
        let server = ApiServer::builder().data_dir(dir.path()).build().unwrap();
        let api = api(&server);
        for i in 0..5 {
            api.create(&PostParams::default(), &cm(&format!("c{i}")))
                .await
                .unwrap();
        }
        api.delete("c0", &DeleteParams::default()).await.unwrap();
        let mut c1 = api.get("c1").await.unwrap();
        c1.data = Some(BTreeMap::from([("k".to_string(), "changed".to_string())]));
        let c1 = api
            .replace("c1", &PostParams::default(), &c1)
            .await
            .unwrap();
        (c1.uid().unwrap(), server.store().current_rv())
    };
    // Restart twice: the second start reads the snapshot written by the first.
    for _ in 0..2 {
        let server = ApiServer::builder().data_dir(dir.path()).build().unwrap();
        assert_eq!(
            server.store().current_rv(),
            rv,
            "resourceVersions continue where they stopped"
        );
        let api = api(&server);
        let names: Vec<String> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        assert_eq!(names, ["c1", "c2", "c3", "c4"]);
        let c1 = api.get("c1").await.unwrap();
        assert_eq!(c1.uid().unwrap(), uid);
        assert_eq!(c1.data.unwrap()["k"], "changed");
    }
    // A torn last journal line (a crash mid-write) is ignored.
    let server = ApiServer::builder().data_dir(dir.path()).build().unwrap();
    api(&server)
        .create(&PostParams::default(), &cm("c9"))
        .await
        .unwrap();
    drop(server);
    use std::io::Write;
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("journal.jsonl"))
        .unwrap();
    journal.write_all(b"{\"rv\": 99999, \"resour").unwrap();
    drop(journal);
    let server = ApiServer::builder().data_dir(dir.path()).build().unwrap();
    assert!(api(&server).get_opt("c9").await.unwrap().is_some());
}
