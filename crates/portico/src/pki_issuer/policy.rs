//! Who may have a Raft certificate, and for which name: a pure judgement over what the API
//! server said (the TokenReview's status, the Pod, the StatefulSet), so every rule is tested
//! without one. The name comes from the verified Pod, never from the caller.
//!
//! A caller gets a certificate for Pod `P` only if its token is valid for our audience, is
//! the replicas' ServiceAccount's, is bound to Pod `P` (pod-name and pod-uid extras), and
//! `P` exists now with that UID, is not terminating, and is controlled by our StatefulSet
//! (the one that exists now, by UID).

use http::StatusCode;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::Pod;

const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// What the issuer accepts, from its flags.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The issuer's namespace: the replicas', their Pods' and the StatefulSet's.
    pub namespace: String,
    /// The replicas' ServiceAccount.
    pub service_account: String,
    /// The StatefulSet whose Pods are the replicas.
    pub statefulset: String,
    /// The audience a replica's token must be made for.
    pub audience: String,
}

/// The Pod a valid token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub uid: String,
}

/// A rule that refused a caller. The message names the rule, never the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token")]
    MissingToken,
    #[error("the token is not authenticated (TokenReview)")]
    NotAuthenticated,
    #[error("the token is not for audience {0}")]
    WrongAudience(String),
    #[error("the token is not ServiceAccount {0}'s")]
    WrongServiceAccount(String),
    #[error("the token is not bound to a Pod (no pod-name and pod-uid)")]
    NotPodBound,
    #[error("the token's Pod name is not a DNS label")]
    PodNameInvalid,
    #[error("the token's Pod {0} does not exist")]
    PodNotFound(String),
    #[error("the token's Pod {0} was deleted and re-created (its UID differs)")]
    PodUidDiffers(String),
    #[error("Pod {0} is terminating")]
    PodTerminating(String),
    #[error("Pod {pod} is not controlled by StatefulSet {statefulset}")]
    NotOwnedByStatefulSet { pod: String, statefulset: String },
    #[error("Pod {pod}'s StatefulSet {statefulset} is not the one that exists now (UID)")]
    StatefulSetUidDiffers { pod: String, statefulset: String },
}

impl Refusal {
    /// 401 when the token proves nobody; 403 when it proves someone who may not have one.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::NotAuthenticated | Self::WrongAudience(_) => {
                StatusCode::UNAUTHORIZED
            }
            _ => StatusCode::FORBIDDEN,
        }
    }

    /// The rule's name, for logs and the metric's label.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::NotAuthenticated => "not_authenticated",
            Self::WrongAudience(_) => "wrong_audience",
            Self::WrongServiceAccount(_) => "wrong_service_account",
            Self::NotPodBound => "not_pod_bound",
            Self::PodNameInvalid => "pod_name_invalid",
            Self::PodNotFound(_) => "pod_not_found",
            Self::PodUidDiffers(_) => "pod_uid_differs",
            Self::PodTerminating(_) => "pod_terminating",
            Self::NotOwnedByStatefulSet { .. } => "not_owned_by_statefulset",
            Self::StatefulSetUidDiffers { .. } => "statefulset_uid_differs",
        }
    }
}

impl Policy {
    /// The Pod a TokenReview's status vouches for, if it vouches for one of our replicas'.
    pub fn token(&self, status: Option<&TokenReviewStatus>) -> Result<BoundPod, Refusal> {
        let status = status.ok_or(Refusal::NotAuthenticated)?;
        if status.authenticated != Some(true) {
            return Err(Refusal::NotAuthenticated);
        }
        let audiences = status.audiences.as_deref().unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(Refusal::WrongAudience(self.audience.clone()));
        }
        let user = status.user.as_ref().ok_or(Refusal::NotAuthenticated)?;
        let expected = format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        );
        if user.username.as_deref() != Some(expected.as_str()) {
            return Err(Refusal::WrongServiceAccount(format!(
                "{}/{}",
                self.namespace, self.service_account
            )));
        }
        let extra = |key: &str| -> Option<String> {
            match user.extra.as_ref()?.get(key)?.as_slice() {
                [one] if !one.is_empty() => Some(one.clone()),
                _ => None,
            }
        };
        let (Some(name), Some(uid)) = (extra(POD_NAME_EXTRA), extra(POD_UID_EXTRA)) else {
            return Err(Refusal::NotPodBound);
        };
        // It becomes a certificate name: a DNS label only (a StatefulSet's Pods always are).
        if !is_dns_label(&name) {
            return Err(Refusal::PodNameInvalid);
        }
        Ok(BoundPod { name, uid })
    }

    /// Whether `bound`'s Pod, as it is now (`pod`, `None` if it does not exist), is a live
    /// replica of our StatefulSet (`statefulset`, `None` if it does not exist).
    pub fn pod(
        &self,
        bound: &BoundPod,
        pod: Option<&Pod>,
        statefulset: Option<&StatefulSet>,
    ) -> Result<(), Refusal> {
        let name = &bound.name;
        let pod = pod.ok_or_else(|| Refusal::PodNotFound(name.clone()))?;
        if pod.metadata.uid.as_deref() != Some(bound.uid.as_str()) {
            return Err(Refusal::PodUidDiffers(name.clone()));
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return Err(Refusal::PodTerminating(name.clone()));
        }
        let not_owned = || Refusal::NotOwnedByStatefulSet {
            pod: name.clone(),
            statefulset: self.statefulset.clone(),
        };
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|owner| owner.controller == Some(true))
            .ok_or_else(not_owned)?;
        if owner.api_version != "apps/v1"
            || owner.kind != "StatefulSet"
            || owner.name != self.statefulset
        {
            return Err(not_owned());
        }
        let current = statefulset.and_then(|s| s.metadata.uid.as_deref());
        if current != Some(owner.uid.as_str()) {
            return Err(Refusal::StatefulSetUidDiffers {
                pod: name.clone(),
                statefulset: self.statefulset.clone(),
            });
        }
        Ok(())
    }
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    use super::*;

    fn policy() -> Policy {
        Policy {
            namespace: "portico-system".into(),
            service_account: "portico".into(),
            statefulset: "portico".into(),
            audience: "portico-raft-pki".into(),
        }
    }

    /// What the API server says of a token of `portico` bound to Pod portico-0.
    fn review() -> TokenReviewStatus {
        let extra = BTreeMap::from([
            (POD_NAME_EXTRA.to_owned(), vec!["portico-0".to_owned()]),
            (POD_UID_EXTRA.to_owned(), vec!["pod-uid-0".to_owned()]),
            (
                "authentication.kubernetes.io/credential-id".to_owned(),
                vec!["JTI=x".to_owned()],
            ),
        ]);
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["portico-raft-pki".into()]),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:portico-system:portico".into()),
                extra: Some(extra),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    fn bound() -> BoundPod {
        BoundPod {
            name: "portico-0".into(),
            uid: "pod-uid-0".into(),
        }
    }

    fn owner(kind: &str, name: &str, uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: Some(true),
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("portico-0".into()),
                namespace: Some("portico-system".into()),
                uid: Some("pod-uid-0".into()),
                owner_references: Some(vec![owner("StatefulSet", "portico", "sts-uid", true)]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn statefulset(uid: &str) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("portico".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..StatefulSet::default()
        }
    }

    fn judge_pod(pod: Option<&Pod>) -> Result<(), Refusal> {
        policy().pod(&bound(), pod, Some(&statefulset("sts-uid")))
    }

    #[test]
    fn a_pod_bound_token_of_the_replicas_service_account_names_its_pod() {
        assert_eq!(policy().token(Some(&review())), Ok(bound()));
        assert_eq!(judge_pod(Some(&pod())), Ok(()));
    }

    #[test]
    fn an_unauthenticated_or_missing_review_is_401() {
        assert_eq!(policy().token(None), Err(Refusal::NotAuthenticated));
        let mut status = review();
        status.authenticated = Some(false);
        assert_eq!(
            policy().token(Some(&status)),
            Err(Refusal::NotAuthenticated)
        );
        status.authenticated = None;
        assert_eq!(
            policy().token(Some(&status)),
            Err(Refusal::NotAuthenticated)
        );
        let mut status = review();
        status.user = None;
        assert_eq!(
            policy().token(Some(&status)),
            Err(Refusal::NotAuthenticated)
        );
        assert_eq!(Refusal::NotAuthenticated.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Refusal::MissingToken.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_token_for_another_audience_is_401() {
        for audiences in [
            None,
            Some(vec![]),
            Some(vec!["https://kubernetes.default.svc".into()]),
        ] {
            let mut status = review();
            status.audiences = audiences;
            let refusal = policy().token(Some(&status)).unwrap_err();
            assert_eq!(refusal, Refusal::WrongAudience("portico-raft-pki".into()));
            assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn another_service_account_or_a_user_is_403() {
        for username in [
            Some("system:serviceaccount:portico-system:default"),
            Some("system:serviceaccount:other:portico"),
            Some("system:serviceaccount:portico-system:portico-pki"),
            Some("alice"),
            None,
        ] {
            let mut status = review();
            status.user.as_mut().unwrap().username = username.map(str::to_owned);
            let refusal = policy().token(Some(&status)).unwrap_err();
            assert_eq!(
                refusal,
                Refusal::WrongServiceAccount("portico-system/portico".into()),
                "{username:?}"
            );
            assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn a_token_not_bound_to_one_pod_is_403() {
        type Extra = BTreeMap<String, Vec<String>>;
        let cases: [fn(&mut Extra); 5] = [
            |extra| {
                extra.remove(POD_NAME_EXTRA);
            },
            |extra| {
                extra.remove(POD_UID_EXTRA);
            },
            |extra| {
                extra.insert(POD_NAME_EXTRA.into(), vec![]);
            },
            |extra| {
                extra.insert(
                    POD_NAME_EXTRA.into(),
                    vec!["portico-0".into(), "portico-1".into()],
                );
            },
            |extra| {
                extra.insert(POD_UID_EXTRA.into(), vec![String::new()]);
            },
        ];
        for change in cases {
            let mut status = review();
            change(status.user.as_mut().unwrap().extra.as_mut().unwrap());
            assert_eq!(policy().token(Some(&status)), Err(Refusal::NotPodBound));
        }
        let mut status = review();
        status.user.as_mut().unwrap().extra = None;
        assert_eq!(policy().token(Some(&status)), Err(Refusal::NotPodBound));
        assert_eq!(Refusal::NotPodBound.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_pod_name_that_is_no_dns_label_is_403() {
        for name in [
            "portico-0.evil.example",
            "Portico-0",
            "-x",
            "a".repeat(64).as_str(),
        ] {
            let mut status = review();
            let extra = status.user.as_mut().unwrap().extra.as_mut().unwrap();
            extra.insert(POD_NAME_EXTRA.into(), vec![name.to_owned()]);
            assert_eq!(
                policy().token(Some(&status)),
                Err(Refusal::PodNameInvalid),
                "{name}"
            );
        }
    }

    #[test]
    fn a_pod_that_is_gone_or_re_created_is_403() {
        assert_eq!(
            judge_pod(None),
            Err(Refusal::PodNotFound("portico-0".into()))
        );
        let mut recreated = pod();
        recreated.metadata.uid = Some("pod-uid-new".into());
        assert_eq!(
            judge_pod(Some(&recreated)),
            Err(Refusal::PodUidDiffers("portico-0".into()))
        );
        let mut terminating = pod();
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        let refusal = judge_pod(Some(&terminating)).unwrap_err();
        assert_eq!(refusal, Refusal::PodTerminating("portico-0".into()));
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_pod_not_controlled_by_our_statefulset_is_403() {
        let not_owned = Err(Refusal::NotOwnedByStatefulSet {
            pod: "portico-0".into(),
            statefulset: "portico".into(),
        });
        let owners = [
            vec![],
            // An owner that is not the controller does not make the Pod a replica.
            vec![owner("StatefulSet", "portico", "sts-uid", false)],
            vec![owner("StatefulSet", "other", "sts-uid", true)],
            vec![owner("ReplicaSet", "portico", "sts-uid", true)],
            vec![
                owner("StatefulSet", "portico", "sts-uid", false),
                owner("StatefulSet", "other", "other-uid", true),
            ],
        ];
        for owners in owners {
            let mut bare = pod();
            bare.metadata.owner_references = Some(owners.clone());
            assert_eq!(judge_pod(Some(&bare)), not_owned, "{owners:?}");
        }
        let mut other_group = pod();
        other_group.metadata.owner_references.as_mut().unwrap()[0].api_version =
            "example.com/v1".into();
        assert_eq!(judge_pod(Some(&other_group)), not_owned);
        let mut none = pod();
        none.metadata.owner_references = None;
        assert_eq!(judge_pod(Some(&none)), not_owned);
    }

    #[test]
    fn a_pod_of_a_deleted_or_re_created_statefulset_is_403() {
        let differs = Err(Refusal::StatefulSetUidDiffers {
            pod: "portico-0".into(),
            statefulset: "portico".into(),
        });
        let p = pod();
        assert_eq!(policy().pod(&bound(), Some(&p), None), differs);
        assert_eq!(
            policy().pod(&bound(), Some(&p), Some(&statefulset("new-uid"))),
            differs
        );
    }

    #[test]
    fn every_refusal_has_a_rule_name_of_its_own() {
        let refusals = [
            Refusal::MissingToken,
            Refusal::NotAuthenticated,
            Refusal::WrongAudience("a".into()),
            Refusal::WrongServiceAccount("ns/sa".into()),
            Refusal::NotPodBound,
            Refusal::PodNameInvalid,
            Refusal::PodNotFound("p".into()),
            Refusal::PodUidDiffers("p".into()),
            Refusal::PodTerminating("p".into()),
            Refusal::NotOwnedByStatefulSet {
                pod: "p".into(),
                statefulset: "s".into(),
            },
            Refusal::StatefulSetUidDiffers {
                pod: "p".into(),
                statefulset: "s".into(),
            },
        ];
        let mut rules: Vec<&str> = refusals.iter().map(Refusal::rule).collect();
        rules.sort_unstable();
        rules.dedup();
        assert_eq!(rules.len(), refusals.len());
    }
}
