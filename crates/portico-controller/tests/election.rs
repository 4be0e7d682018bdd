//! client-go's election algorithm, step by step, against the in-process API server.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::DeleteParams;
use kube::{Api, Client};
use portico_apiserver::ApiServer;
use portico_controller::election::{Attempt, ElectionError, Elector};

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

#[tokio::test]
async fn acquire_renew_expire_release_and_recreate() {
    let server = ApiServer::builder().build().unwrap();
    let client = Client::new(server.service(), "default");
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
    loop {
        match b.try_acquire_or_renew(1, BUDGET).await.unwrap() {
            Attempt::HeldByOther { .. } => tokio::time::sleep(Duration::from_millis(50)).await,
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
                break;
            }
        }
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
