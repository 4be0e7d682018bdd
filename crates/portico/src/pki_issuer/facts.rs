//! What the issuer asks the API server for each request, afresh every time (nothing is
//! cached, so a deleted Pod's token stops working at once): a TokenReview of the caller's
//! token for our audience, then the Pod it is bound to and our StatefulSet. Any failure to
//! ask is an error, never an answer: the caller then gets 503, not a certificate.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

/// How long one question to the API server may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("asking the API server for {what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the API server did not answer about {0} within {TIMEOUT:?}")]
    Timeout(&'static str),
}

async fn ask<T>(
    what: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, AskError> {
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(source)) => Err(AskError::Api { what, source }),
        Err(_) => Err(AskError::Timeout(what)),
    }
}

/// The TokenReview's status for `token` made for `audience`.
pub async fn review_token(
    client: &kube::Client,
    token: &str,
    audience: &str,
) -> Result<Option<TokenReviewStatus>, AskError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let answer = ask("a TokenReview", api.create(&PostParams::default(), &review)).await?;
    Ok(answer.status)
}

/// The Pod `pod` and the StatefulSet `statefulset` in `namespace`, each `None` if it does
/// not exist.
pub async fn pod_and_statefulset(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    statefulset: &str,
) -> Result<(Option<Pod>, Option<StatefulSet>), AskError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let pod = ask("the Pod", pods.get_opt(pod)).await?;
    let set = ask("the StatefulSet", sets.get_opt(statefulset)).await?;
    Ok((pod, set))
}
