//! Leader election on a `coordination.k8s.io/v1` Lease, written directly (kube-rs has none built
//! in): a replica acts only while it holds the Lease; it renews it every third of the lease
//! duration with optimistic concurrency (resourceVersion), and steps down (cancelling the
//! shutdown token, so the process exits and restarts as a follower) the moment a renewal finds
//! another holder or cannot be written before the lease would expire. Two replicas therefore
//! never act at once, as long as clocks agree to within the lease duration.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: SignedDuration = SignedDuration::from_secs(15);

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the Lease failed.
    #[error("failed to {action} lease {name}")]
    Api {
        /// What was done.
        action: &'static str,
        /// Lease name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Shut down before becoming leader.
    #[error("shut down before acquiring the lease")]
    Cancelled,
}

impl Error {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Api { .. } => "lease",
            Error::Cancelled => "cancelled",
        }
    }
}

/// What to do with the Lease as observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds it until then.
    Wait(Timestamp),
}

/// Pure decision from the observed Lease spec.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = spec else {
        return LeaseDecision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => LeaseDecision::Acquire,
        Some(holder) if holder == me => LeaseDecision::Renew,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .map_or(LEASE_DURATION, |s| SignedDuration::from_secs(i64::from(s)));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
            let expiry = renewed + duration;
            if expiry <= now {
                LeaseDecision::Acquire
            } else {
                LeaseDecision::Wait(expiry)
            }
        }
    }
}

fn spec_for(previous: Option<&LeaseSpec>, me: &str, now: Timestamp, acquiring: bool) -> LeaseSpec {
    let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.into()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if acquiring {
            Some(MicroTime(now))
        } else {
            previous.and_then(|s| s.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if acquiring && previous.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// One attempt: read the Lease and take or renew it if we may. Returns whether we hold it now,
/// or until when someone else does.
pub async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    now: Timestamp,
) -> Result<LeaseDecision, Error> {
    let current = api.get_opt(name).await.map_err(|source| Error::Api {
        action: "read",
        name: name.into(),
        source,
    })?;
    let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), me, now);
    let acquiring = decision == LeaseDecision::Acquire;
    if let LeaseDecision::Wait(_) = decision {
        return Ok(decision);
    }
    let write = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(None, me, now, true)),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Some(mut lease) => {
            // Replace carries metadata.resourceVersion: a concurrent writer makes this a 409.
            lease.spec = Some(spec_for(lease.spec.as_ref(), me, now, acquiring));
            api.replace(name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    match write {
        Ok(()) => Ok(LeaseDecision::Renew),
        // Someone else wrote first: they hold it for a full duration at least.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(LeaseDecision::Wait(now + LEASE_DURATION)),
        Err(source) => Err(Error::Api {
            action: "write",
            name: name.into(),
            source,
        }),
    }
}

/// Blocks until this replica holds the Lease (or `shutdown` is cancelled).
pub async fn acquire(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    loop {
        let wait = match try_acquire(api, name, me, Timestamp::now()).await {
            Ok(LeaseDecision::Renew | LeaseDecision::Acquire) => {
                info!(lease = name, identity = me, "acquired leadership");
                return Ok(());
            }
            Ok(LeaseDecision::Wait(until)) => {
                Duration::try_from(until.duration_since(Timestamp::now()))
                    .unwrap_or(Duration::from_secs(1))
            }
            Err(e) => {
                warn!(error = %e, "leader election failed; retrying");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Err(Error::Cancelled),
            () = tokio::time::sleep(wait.min(Duration::from_secs(5))) => {}
        }
    }
}

/// Renews the Lease until `shutdown` is cancelled; cancels it itself when leadership is lost.
pub async fn hold(api: Api<Lease>, name: String, me: String, shutdown: CancellationToken) {
    let period = Duration::try_from(LEASE_DURATION / 3).unwrap_or(Duration::from_secs(5));
    let mut last_renewal = Timestamp::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let now = Timestamp::now();
        match try_acquire(&api, &name, &me, now).await {
            Ok(LeaseDecision::Renew | LeaseDecision::Acquire) => last_renewal = now,
            Ok(LeaseDecision::Wait(_)) => {
                warn!(lease = %name, "another replica holds the lease: stepping down");
                shutdown.cancel();
                return;
            }
            Err(e) if now.duration_since(last_renewal) >= LEASE_DURATION - LEASE_DURATION / 3 => {
                warn!(error = %e, "could not renew the lease in time: stepping down");
                shutdown.cancel();
                return;
            }
            Err(e) => warn!(error = %e, "lease renewal failed; retrying"),
        }
    }
}

/// Gives the Lease up on a clean shutdown so another replica takes over at once.
pub async fn release(api: &Api<Lease>, name: &str, me: &str) {
    if let Ok(Some(mut lease)) = api.get_opt(name).await
        && lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(me)
    {
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        if let Err(e) = api.replace(name, &PostParams::default(), &lease).await {
            warn!(error = %e, "could not release the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{ApiServer, ts};

    fn spec(holder: Option<&str>, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(ts(renewed))),
            ..LeaseSpec::default()
        }
    }

    /// The pure decision: free or expired leases are taken, ours renewed, a live foreign one
    /// waited for. If this breaks, two replicas act at once or none ever leads.
    #[test]
    fn lease_decision_table() {
        let now = ts(100);
        assert_eq!(decide(None, "a", now), LeaseDecision::Acquire);
        assert_eq!(
            decide(Some(&spec(None, 99)), "a", now),
            LeaseDecision::Acquire
        );
        assert_eq!(
            decide(Some(&spec(Some("a"), 99)), "a", now),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 90)), "a", now),
            LeaseDecision::Wait(ts(105))
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 85)), "a", now),
            LeaseDecision::Acquire
        );
    }

    /// A missing Lease is created with us as holder; a live foreign Lease is left alone (no
    /// write); an expired one is replaced with its resourceVersion. If this breaks, leader
    /// election either never starts or steals a live lease.
    #[tokio::test]
    async fn acquire_creates_respects_and_takes_over() {
        let (client, server) = ApiServer::new();
        let api: Api<Lease> = Api::namespaced(client, "lodger-system");
        let path = "/apis/coordination.k8s.io/v1/namespaces/lodger-system/leases";
        let task = server.run(vec![
            ApiServer::expect("GET", &format!("{path}/op"), |_| (404, ApiServer::not_found())),
            ApiServer::expect("POST", path, |body| {
                assert_eq!(body["spec"]["holderIdentity"], "me");
                (201, body)
            }),
            ApiServer::expect("GET", &format!("{path}/op"), |_| {
                (200, serde_json::json!({"metadata": {"name": "op", "resourceVersion": "7"},
                    "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15,
                             "renewTime": "1970-01-01T00:01:35.000000Z"}}))
            }),
            ApiServer::expect("GET", &format!("{path}/op"), |_| {
                (200, serde_json::json!({"metadata": {"name": "op", "resourceVersion": "8"},
                    "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15, "leaseTransitions": 2,
                             "renewTime": "1970-01-01T00:01:00.000000Z"}}))
            }),
            ApiServer::expect("PUT", &format!("{path}/op"), |body| {
                assert_eq!(body["metadata"]["resourceVersion"], "8");
                assert_eq!(body["spec"]["holderIdentity"], "me");
                assert_eq!(body["spec"]["leaseTransitions"], 3);
                (200, body)
            }),
        ]);
        assert_eq!(
            try_acquire(&api, "op", "me", ts(100)).await.unwrap(),
            LeaseDecision::Renew
        );
        assert_eq!(
            try_acquire(&api, "op", "me", ts(100)).await.unwrap(),
            LeaseDecision::Wait(ts(110))
        );
        assert_eq!(
            try_acquire(&api, "op", "me", ts(100)).await.unwrap(),
            LeaseDecision::Renew
        );
        task.done().await;
    }
}
