//! Leader election over a `coordination.k8s.io/v1` Lease (`cilium-operator-resource-lock`,
//! as upstream), with client-go's semantics: a lease held by another replica counts as
//! expired only once its record has not changed for `leaseDurationSeconds` *as measured
//! on this replica's clock* (no trust in other clocks); the leader renews every retry
//! period and steps down when a renewal conflicts or has not succeeded for the renew
//! deadline. [`decide`] is the pure part; [`Elector`] talks to the API.
use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{api::PostParams, Api};

/// The Lease's name, as upstream's operator.
pub const LEASE_NAME: &str = "cilium-operator-resource-lock";

/// Timings (upstream's flag defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a silent lease keeps other replicas waiting.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// The interval between attempts (acquire or renew).
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What one look at the Lease says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease: create it, holding it.
    Create,
    /// Free (released, or expired on our clock): take it over.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Someone else's and live: wait (it expires in this long if it stays unchanged).
    Follow {
        holder: String,
        expires_in: Duration,
    },
}

/// The part of a Lease's record that tells whether its holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renew: Option<MicroTime>,
    transitions: i32,
}

fn record(spec: &LeaseSpec) -> Record {
    Record {
        holder: spec.holder_identity.clone().unwrap_or_default(),
        renew: spec.renew_time.clone(),
        transitions: spec.lease_transitions.unwrap_or(0),
    }
}

/// When this replica last saw the Lease's record change (client-go's observedTime).
#[derive(Debug, Clone, Default)]
pub struct Observer {
    last: Option<(Record, Instant)>,
}

impl Observer {
    /// Notes the record seen at `now`; returns when it was first seen as it is.
    pub fn observe(&mut self, spec: &LeaseSpec, now: Instant) -> Instant {
        let r = record(spec);
        match &self.last {
            Some((prev, at)) if *prev == r => *at,
            _ => {
                self.last = Some((r, now));
                now
            }
        }
    }
}

/// The pure decision: `spec` is the Lease's spec (`None`: no Lease), `unchanged_since`
/// when this replica first saw that record, `default_duration` the lease duration to
/// assume when the record carries none.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_since: Instant,
    now: Instant,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(default_duration);
    let expires = unchanged_since + duration;
    if now >= expires {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_string(),
            expires_in: expires - now,
        }
    }
}

/// The spec this replica writes for `decision` (Create, Acquire or Renew) at wall time `now`.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    now: Timestamp,
    cfg: &LeaseConfig,
) -> LeaseSpec {
    let t = MicroTime(now);
    let prev = current.cloned().unwrap_or_default();
    let transitions = prev.lease_transitions.unwrap_or(0);
    let duration = Some(cfg.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32);
    match decision {
        Decision::Renew => LeaseSpec {
            holder_identity: Some(me.to_string()),
            renew_time: Some(t),
            lease_duration_seconds: duration,
            acquire_time: prev.acquire_time.clone().or(Some(MicroTime(now))),
            ..prev
        },
        Decision::Create => LeaseSpec {
            holder_identity: Some(me.to_string()),
            acquire_time: Some(t.clone()),
            renew_time: Some(t),
            lease_duration_seconds: duration,
            lease_transitions: Some(0),
            ..Default::default()
        },
        Decision::Acquire | Decision::Follow { .. } => LeaseSpec {
            holder_identity: Some(me.to_string()),
            acquire_time: Some(t.clone()),
            renew_time: Some(t),
            lease_duration_seconds: duration,
            lease_transitions: Some(transitions + 1),
            ..prev
        },
    }
}

/// The identity this replica writes as holder: its node (`K8S_NODE_NAME`, else the host
/// name) and a random suffix, so two replicas never share one.
pub fn holder_identity() -> String {
    let host = std::env::var("K8S_NODE_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cilium-operator".into());
    let mut seed = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let salt = u64::from_ne_bytes(seed)
        ^ u64::from(std::process::id())
        ^ (Timestamp::now().as_nanosecond() as u64);
    format!("{host}-{:010x}", salt & 0xff_ffff_ffff)
}

/// Why the leader stepped down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The Lease changed under us (409 on renewal) or names someone else.
    Conflict,
    /// No successful renewal within the renew deadline; the last error.
    Deadline(String),
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (created, acquired or renewed).
    Held,
    /// Someone else holds it.
    Following { holder: String },
    /// Our write lost a race (409).
    Conflict,
}

/// One replica's candidacy.
pub struct Elector {
    api: Api<Lease>,
    me: String,
    cfg: LeaseConfig,
    observer: Observer,
}

impl Elector {
    pub fn new(api: Api<Lease>, me: String, cfg: LeaseConfig) -> Self {
        Self {
            api,
            me,
            cfg,
            observer: Observer::default(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.me
    }

    /// One get + decide + write.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let lease = self.api.get_opt(LEASE_NAME).await?;
        let now = Instant::now();
        let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let since = spec
            .as_ref()
            .map(|s| self.observer.observe(s, now))
            .unwrap_or(now);
        let decision = decide(spec.as_ref(), &self.me, since, now, self.cfg.lease_duration);
        if let Decision::Follow { holder, .. } = decision {
            return Ok(Attempt::Following { holder });
        }
        let new_spec = next_spec(
            spec.as_ref(),
            &decision,
            &self.me,
            Timestamp::now(),
            &self.cfg,
        );
        let result = match lease {
            None => {
                let l = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        ..Default::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &l).await
            }
            Some(mut l) => {
                // Replace carries the resourceVersion read: a concurrent writer makes it 409.
                l.spec = Some(new_spec);
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &l)
                    .await
            }
        };
        match result {
            Ok(l) => {
                if let Some(s) = &l.spec {
                    self.observer.observe(s, Instant::now());
                }
                if decision != Decision::Renew {
                    tracing::info!(identity = %self.me, lease = LEASE_NAME, "became leader");
                }
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
                Ok(Attempt::Conflict)
            }
            Err(e) => Err(e),
        }
    }

    /// Tries every retry period until this replica holds the lease.
    pub async fn acquire(&mut self, health: &super::health::Health) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    health.api_ok();
                    health.set_leader(true);
                    return;
                }
                Ok(Attempt::Following { holder }) => {
                    health.api_ok();
                    tracing::debug!(%holder, "lease held by another replica; waiting");
                }
                Ok(Attempt::Conflict) => health.api_ok(),
                Err(e) => {
                    health.api_error(&e);
                    tracing::warn!(error = %e, "leader election: reading or writing the lease failed");
                }
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews every retry period while leading; returns when leadership is lost.
    pub async fn hold(&mut self, health: &super::health::Health) -> Lost {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            let err = match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    health.api_ok();
                    last_renewed = Instant::now();
                    continue;
                }
                Ok(Attempt::Following { holder }) => {
                    health.api_ok();
                    tracing::warn!(%holder, "the lease names another replica: stepping down");
                    health.set_leader(false);
                    return Lost::Conflict;
                }
                Ok(Attempt::Conflict) => {
                    health.api_ok();
                    tracing::warn!(
                        "renewing the lease conflicted (changed by another replica): stepping down"
                    );
                    health.set_leader(false);
                    return Lost::Conflict;
                }
                Err(e) => {
                    health.api_error(&e);
                    e.to_string()
                }
            };
            if last_renewed.elapsed() >= self.cfg.renew_deadline {
                tracing::warn!(error = %err, deadline = ?self.cfg.renew_deadline, "lease not renewed within the renew deadline: stepping down");
                health.set_leader(false);
                return Lost::Deadline(err);
            }
            tracing::warn!(error = %err, "renewing the lease failed; retrying");
        }
    }

    /// Gives the lease up (clean shutdown): an empty holder lets a standby take over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut l) = self.api.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let spec = l.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        self.api
            .replace(LEASE_NAME, &PostParams::default(), &l)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: (!holder.is_empty()).then(|| holder.to_string()),
            lease_duration_seconds: Some(secs),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn no_lease_is_created_ours_is_renewed_empty_is_acquired() {
        let t = Instant::now();
        assert_eq!(decide(None, "me", t, t, D), Decision::Create);
        assert_eq!(
            decide(Some(&spec("me", 15)), "me", t, t, D),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec("", 15)), "me", t, t, D),
            Decision::Acquire
        );
    }

    #[test]
    fn a_live_lease_is_followed_until_it_goes_silent_for_its_duration() {
        let t0 = Instant::now();
        let s = spec("other", 15);
        match decide(Some(&s), "me", t0, t0 + Duration::from_secs(5), D) {
            Decision::Follow { holder, expires_in } => {
                assert_eq!(holder, "other");
                assert_eq!(expires_in, Duration::from_secs(10));
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(
            decide(Some(&s), "me", t0, t0 + Duration::from_secs(15), D),
            Decision::Acquire
        );
        // A record without a duration falls back to ours.
        let mut s2 = s.clone();
        s2.lease_duration_seconds = None;
        assert_eq!(
            decide(Some(&s2), "me", t0, t0 + Duration::from_secs(14), D),
            Decision::Follow {
                holder: "other".into(),
                expires_in: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn expiry_is_measured_from_when_we_saw_the_record_change_not_its_timestamps() {
        // The renew time in the object is 1970 (a skewed clock): it does not matter.
        let mut obs = Observer::default();
        let t0 = Instant::now();
        let s = spec("other", 15);
        let since = obs.observe(&s, t0);
        assert_eq!(since, t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(obs.observe(&s, t1), t0, "unchanged record keeps its time");
        // The holder renews: the record changes, the clock restarts.
        let mut renewed = s.clone();
        renewed.renew_time = Some(MicroTime(Timestamp::UNIX_EPOCH + Duration::from_secs(1)));
        let since = obs.observe(&renewed, t1);
        assert_eq!(since, t1);
        assert!(matches!(
            decide(Some(&renewed), "me", since, t0 + Duration::from_secs(20), D),
            Decision::Follow { .. }
        ));
        assert_eq!(
            decide(Some(&renewed), "me", since, t1 + Duration::from_secs(15), D),
            Decision::Acquire
        );
    }

    #[test]
    fn written_specs() {
        let cfg = LeaseConfig::default();
        let now = Timestamp::UNIX_EPOCH + Duration::from_secs(100);
        let c = next_spec(None, &Decision::Create, "me", now, &cfg);
        assert_eq!(c.holder_identity.as_deref(), Some("me"));
        assert_eq!(c.lease_duration_seconds, Some(15));
        assert_eq!(c.lease_transitions, Some(0));
        assert_eq!(c.renew_time, Some(MicroTime(now)));
        let old = spec("other", 15);
        let a = next_spec(Some(&old), &Decision::Acquire, "me", now, &cfg);
        assert_eq!(
            a.lease_transitions,
            Some(4),
            "a takeover counts a transition"
        );
        assert_eq!(a.acquire_time, Some(MicroTime(now)));
        let mine = LeaseSpec {
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..spec("me", 15)
        };
        let r = next_spec(Some(&mine), &Decision::Renew, "me", now, &cfg);
        assert_eq!(r.lease_transitions, Some(3));
        assert_eq!(r.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(r.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn identities_differ() {
        let (a, b) = (holder_identity(), holder_identity());
        assert_ne!(a, b);
        assert!(!a.is_empty());
    }
}
