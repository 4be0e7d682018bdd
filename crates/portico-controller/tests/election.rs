//! client-go's election algorithm, step by step, against the in-process API server and
//! against a real kube-apiserver (tests/kube's kube-testenv): the same steps on both, and on
//! the real one a race really lost (a rival writes the Lease between our read and our write,
//! and the real server refuses our stale resourceVersion) and a real server stopped. The
//! in-process server alone can inject a slow answer (the time-out) and the M5 epochs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use portico_apiserver::ApiServer;
use portico_controller::election::{Attempt, ElectionError, Elector};

#[allow(dead_code)]
#[path = "../../portico/tests/common/real_apiserver.rs"]
mod real_apiserver;

use real_apiserver::RealApiServer;

const LEASE: Duration = Duration::from_millis(800);
const BUDGET: Duration = Duration::from_secs(5);

fn elector(client: &Client, identity: &str) -> Elector {
    Elector::new(
        Api::namespaced(client.clone(), "default"),
        "portico-leader".into(),
        identity.into(),
        LEASE,
        BUDGET,
    )
}

async fn lease(client: &Client) -> Lease {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get("portico-leader")
        .await
        .unwrap()
}

/// The admin's client of a real API server.
async fn real_client(api: &RealApiServer) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&api.kubeconfig).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn acquire_renew_expire_release_and_recreate() {
    let server = ApiServer::builder().build().unwrap();
    acquire_renew_expire_release_and_recreate_on(Client::new(server.service(), "default")).await;
}

#[tokio::test]
async fn acquire_renew_expire_release_and_recreate_on_the_real_api_server() {
    let api = RealApiServer::start();
    acquire_renew_expire_release_and_recreate_on(real_client(&api).await).await;
}

async fn acquire_renew_expire_release_and_recreate_on(client: Client) {
    let mut a = elector(&client, "a");
    let mut b = elector(&client, "b");

    // Absent: POST; the epoch is at least min_epoch.
    assert_eq!(
        a.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 1,
            acquired: true
        }
    );
    // Held by a and not expired by b's clock (b just saw it for the first time).
    assert_eq!(
        b.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::HeldByOther { holder: "a".into() }
    );
    // Renewal keeps the epoch.
    assert_eq!(
        a.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 1,
            acquired: false
        }
    );

    // a stops renewing: b may take it only a lease duration after it *saw* the last renew.
    let seen = Instant::now();
    assert!(matches!(
        b.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::HeldByOther { .. }
    ));
    // b's own clock says when a's lease runs out (std's, and against a real API server too:
    // real time): b tries at that moment, as the controller's candidate does.
    let expires = b
        .other_holder_expires_at()
        .expect("b has seen a hold the Lease");
    tokio::time::sleep_until(expires.into()).await;
    match b.try_acquire_or_renew(1, BUDGET).await.unwrap() {
        Attempt::Held { epoch, acquired } => {
            assert!(
                seen.elapsed() >= LEASE - Duration::from_millis(60),
                "{:?}",
                seen.elapsed()
            );
            assert_eq!(
                (epoch, acquired),
                (2, true),
                "a takeover increments leaseTransitions"
            );
        }
        other => panic!("a's lease ran out by b's clock, yet {other:?}"),
    }
    let spec = lease(&client).await.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(2));

    // Release clears the holder; a acquires at once, the epoch grows.
    assert!(b.release(BUDGET).await.unwrap());
    assert!(
        !b.release(BUDGET).await.unwrap(),
        "releasing a lease we do not hold does nothing"
    );
    let spec = lease(&client).await.spec.unwrap();
    assert_eq!(spec.holder_identity, None);
    assert_eq!(spec.lease_transitions, Some(2));
    assert_eq!(
        a.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 3,
            acquired: true
        }
    );

    // The Lease deleted and recreated: its counter restarts, so the acquirer raises it
    // above Raft's highest applied epoch.
    Api::<Lease>::namespaced(client.clone(), "default")
        .delete("portico-leader", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        b.try_acquire_or_renew(4, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 4,
            acquired: true
        }
    );
    assert_eq!(
        lease(&client).await.spec.unwrap().lease_transitions,
        Some(4)
    );
}

#[tokio::test]
async fn a_lost_race_is_a_conflict_and_an_unreachable_server_an_error() {
    let server = ApiServer::builder().build().unwrap();
    let client = Client::new(server.service(), "default");
    let mut a = elector(&client, "a");
    a.try_acquire_or_renew(1, BUDGET).await.unwrap();
    // The next write (a's renewal PUT) loses a race: 409, reported as Conflict.
    server.faults().fail_nth_write(1, 409);
    assert!(matches!(
        a.try_acquire_or_renew(1, BUDGET).await,
        Err(ElectionError::Conflict)
    ));
    server
        .faults()
        .set_availability(portico_apiserver::Availability::Unavailable);
    assert!(matches!(
        a.try_acquire_or_renew(1, BUDGET).await,
        Err(ElectionError::Api(_))
    ));
    server.faults().reset();
    server.faults().set_delay(Duration::from_secs(2));
    assert!(matches!(
        a.try_acquire_or_renew(1, Duration::from_millis(200)).await,
        Err(ElectionError::Timeout)
    ));
    server.faults().reset();
    assert_eq!(
        a.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 1,
            acquired: false
        }
    );
}

/// M5: an epoch is never reused or saturated. A Lease still naming us below Raft's highest
/// epoch (our earlier leadership, claimed) is taken anew with a higher epoch; a
/// `leaseTransitions` pushed to `i32::MAX` by whoever can write the Lease is an error, not
/// an epoch shared with the previous leader.
#[tokio::test]
async fn epochs_are_never_reused_nor_saturated() {
    let server = ApiServer::builder().build().unwrap();
    let client = Client::new(server.service(), "default");
    let mut a = elector(&client, "a");
    assert_eq!(
        a.try_acquire_or_renew(3, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 3,
            acquired: true
        }
    );
    // Raft has applied epoch 3 since (our claim): holding on is a new leadership.
    assert_eq!(
        a.try_acquire_or_renew(4, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 4,
            acquired: true
        }
    );
    assert_eq!(
        lease(&client).await.spec.unwrap().lease_transitions,
        Some(4)
    );

    let api = Api::<Lease>::namespaced(client.clone(), "default");
    let mut pushed = lease(&client).await;
    let spec = pushed.spec.as_mut().unwrap();
    spec.lease_transitions = Some(i32::MAX);
    spec.holder_identity = None;
    api.replace("portico-leader", &Default::default(), &pushed)
        .await
        .unwrap();
    let mut b = elector(&client, "b");
    assert!(matches!(
        b.try_acquire_or_renew(5, BUDGET).await,
        Err(ElectionError::EpochExhausted { epoch }) if epoch == i32::MAX as u64 + 1
    ));
    let spec = lease(&client).await.spec.unwrap();
    assert_eq!(spec.holder_identity, None, "nobody took the Lease");
}

/// `real`, except that while `armed`, the next PUT of the Lease is preceded by a rival's
/// write of it (an annotation, through `real` itself): our read is then stale when our write
/// arrives, as when another candidate wins the race in between.
fn racing_client(real: Client, armed: Arc<AtomicBool>) -> Client {
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (real, armed) = (real.clone(), armed.clone());
        async move {
            let lease_put = request.method() == http::Method::PUT
                && request.uri().path().ends_with("/leases/portico-leader");
            if lease_put && armed.swap(false, Ordering::SeqCst) {
                let rival = serde_json::json!({"metadata": {"annotations": {
                    "test/rival": "wrote between the read and the write"}}});
                Api::<Lease>::namespaced(real.clone(), "default")
                    .patch(
                        "portico-leader",
                        &PatchParams::default(),
                        &Patch::Merge(&rival),
                    )
                    .await?;
            }
            real.send(request).await
        }
    });
    Client::new(service, "default")
}

/// Against the real server: a renewal whose read was overtaken by a rival's write is refused
/// by the real server (409, our resourceVersion is stale) and reported as a Conflict; the next
/// attempt reads the Lease as it is and renews. A stopped API server is an error, not a
/// verdict; once it is back, the Lease is renewed with the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_api_server_a_lost_race_is_its_409_and_a_stopped_server_an_error() {
    let api = RealApiServer::start();
    let real = real_client(&api).await;
    let armed = Arc::new(AtomicBool::new(false));
    let mut a = elector(&racing_client(real.clone(), armed.clone()), "a");
    assert_eq!(
        a.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 1,
            acquired: true
        }
    );

    armed.store(true, Ordering::SeqCst);
    let raced = a.try_acquire_or_renew(1, BUDGET).await;
    assert!(!armed.load(Ordering::SeqCst), "the rival never wrote");
    assert!(matches!(raced, Err(ElectionError::Conflict)), "{raced:?}");
    let lease = lease(&real).await;
    assert_eq!(
        lease.metadata.annotations.unwrap_or_default()["test/rival"],
        "wrote between the read and the write",
        "the rival's write stands"
    );
    assert_eq!(
        a.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 1,
            acquired: false
        }
    );

    tokio::task::block_in_place(|| api.stop_apiserver());
    let stopped = a.try_acquire_or_renew(1, BUDGET).await;
    assert!(matches!(stopped, Err(ElectionError::Api(_))), "{stopped:?}");
    tokio::task::block_in_place(|| api.start_apiserver());
    assert_eq!(
        a.try_acquire_or_renew(1, BUDGET).await.unwrap(),
        Attempt::Held {
            epoch: 1,
            acquired: false
        }
    );
}
