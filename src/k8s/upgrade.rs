//! `cilium upgrade`'s pure parts: what changes between the recorded install and the new
//! render (per object: unchanged, changed with the fields that differ, added, removed),
//! and when a rollout of the agent DaemonSet and the operator Deployment is done.
use std::{collections::BTreeMap, fmt};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use serde::Serialize;
use serde_json::Value;

use super::apply::Object;

/// What happens to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "change", content = "fields")]
pub enum Change {
    /// Rendered as recorded and as it is on the cluster: not applied.
    Unchanged,
    /// Applied; the fields that differ (from the recorded render, or from the cluster
    /// where it drifted or nothing was recorded).
    Changed(Vec<String>),
    /// Not on the cluster: applied.
    Added,
    /// Recorded by the install but no longer rendered: deleted.
    Removed,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Unchanged => "unchanged",
            Change::Changed(_) => "changed",
            Change::Added => "added",
            Change::Removed => "removed",
        })
    }
}

/// One object of the plan.
#[derive(Debug, Clone)]
pub struct Step {
    pub object: Object,
    pub change: Change,
}

/// The new render's objects in apply order, then the removed ones in reverse recorded
/// order (the order to delete them).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// Compares `new` with the `recorded` objects (None: no record) and with `live`,
    /// the cluster's objects by [`ObjectRef`](super::apply::ObjectRef) text (absent:
    /// not on the cluster).
    pub fn new(
        new: Vec<Object>,
        recorded: Option<&[Object]>,
        live: &BTreeMap<String, Value>,
    ) -> Self {
        let mut steps = Vec::new();
        let key = |o: &Object| o.r.to_string();
        for o in &new {
            let rendered = o.json();
            let change = match live.get(&key(o)) {
                None => Change::Added,
                Some(on_cluster) => {
                    let old = recorded.and_then(|r| r.iter().find(|x| x.r == o.r));
                    let mut fields = match old {
                        Some(old) => crate::install::strict::differences(&old.json(), &rendered)
                            .into_iter()
                            .map(|p| {
                                p.trim_end_matches(" (changed)")
                                    .trim_end_matches(" (added)")
                                    .trim_start_matches('.')
                                    .to_string()
                            })
                            .collect(),
                        None => Vec::new(),
                    };
                    if fields.is_empty() {
                        let mut drift = Vec::new();
                        missing_in(&rendered, on_cluster, "", &mut drift);
                        fields = drift
                            .into_iter()
                            .map(|p| format!("{p} (on the cluster)"))
                            .collect();
                    }
                    if fields.is_empty() {
                        Change::Unchanged
                    } else {
                        Change::Changed(fields)
                    }
                }
            };
            steps.push(Step {
                object: o.clone(),
                change,
            });
        }
        if let Some(recorded) = recorded {
            for o in recorded.iter().rev() {
                if !new.iter().any(|n| n.r == o.r) {
                    steps.push(Step {
                        object: o.clone(),
                        change: Change::Removed,
                    });
                }
            }
        }
        Plan { steps }
    }

    /// Counts per change: unchanged, changed, added, removed.
    pub fn counts(&self) -> [usize; 4] {
        let mut c = [0; 4];
        for s in &self.steps {
            c[match s.change {
                Change::Unchanged => 0,
                Change::Changed(_) => 1,
                Change::Added => 2,
                Change::Removed => 3,
            }] += 1;
        }
        c
    }

    /// Whether anything is applied or deleted.
    pub fn is_noop(&self) -> bool {
        self.steps.iter().all(|s| s.change == Change::Unchanged)
    }

    /// Whether the object of this kind and name is applied (changed or added).
    pub fn applies(&self, kind: &str, name: &str) -> bool {
        self.steps.iter().any(|s| {
            s.object.r.kind == kind
                && s.object.r.name == name
                && matches!(s.change, Change::Changed(_) | Change::Added)
        })
    }

    /// One line per object: `changed DaemonSet kube-system/cilium: spec.x, spec.y`.
    pub fn lines(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| match &s.change {
                Change::Changed(fields) => {
                    const SHOWN: usize = 4;
                    let mut f = fields
                        .iter()
                        .take(SHOWN)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ");
                    if fields.len() > SHOWN {
                        f.push_str(&format!(" and {} more", fields.len() - SHOWN));
                    }
                    format!("{:<10} {}: {f}", "changed", s.object.r)
                }
                c => format!("{:<10} {}", c.to_string(), s.object.r),
            })
            .collect()
    }
}

/// Paths of `rendered` that `live` does not hold with the same value. The server adds
/// fields (status, defaults, metadata); only what the render sets is compared.
fn missing_in(rendered: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    match (rendered, live) {
        (Value::Object(r), Value::Object(l)) => {
            for (k, rv) in r {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match l.get(k) {
                    None if rv.is_null() => {}
                    None => out.push(p),
                    Some(lv) => missing_in(rv, lv, &p, out),
                }
            }
        }
        (Value::Array(r), Value::Array(l)) if r.len() == l.len() => {
            for (i, (rv, lv)) in r.iter().zip(l).enumerate() {
                missing_in(rv, lv, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        _ if rendered == live => {}
        _ => out.push(path.to_string()),
    }
}

/// Where a rollout of a DaemonSet or Deployment stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rollout {
    pub kind: String,
    pub name: String,
    pub desired: i32,
    pub updated: i32,
    pub available: i32,
    /// The controller has seen the latest spec (observedGeneration >= generation).
    pub observed: bool,
    /// Old pods still exist (a Deployment's replicas above the desired count).
    pub old_left: i32,
}

impl Rollout {
    pub fn done(&self) -> bool {
        self.observed
            && self.updated == self.desired
            && self.available == self.desired
            && self.old_left == 0
    }

    /// `DaemonSet cilium: 1/3 updated, 2/3 available`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} {}: {}/{} updated, {}/{} available",
            self.kind, self.name, self.updated, self.desired, self.available, self.desired
        );
        if !self.observed {
            s.push_str(" (the controller has not seen the new spec yet)");
        }
        if self.old_left > 0 {
            s.push_str(&format!(", {} old pods left", self.old_left));
        }
        s
    }
}

fn observed(generation: Option<i64>, observed: Option<i64>) -> bool {
    match (generation, observed) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// A DaemonSet is rolled out when every scheduled pod runs the current template and is
/// available.
pub fn daemon_set(ds: &DaemonSet) -> Rollout {
    let st = ds.status.clone().unwrap_or_default();
    Rollout {
        kind: "DaemonSet".into(),
        name: ds.metadata.name.clone().unwrap_or_default(),
        desired: st.desired_number_scheduled,
        updated: st.updated_number_scheduled.unwrap_or(0),
        available: st.number_available.unwrap_or(0),
        observed: observed(ds.metadata.generation, st.observed_generation),
        old_left: 0,
    }
}

/// A Deployment is rolled out when its replicas all run the current template, are
/// available, and no old replica is left.
pub fn deployment(d: &Deployment) -> Rollout {
    let st = d.status.clone().unwrap_or_default();
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    Rollout {
        kind: "Deployment".into(),
        name: d.metadata.name.clone().unwrap_or_default(),
        desired,
        updated: st.updated_replicas.unwrap_or(0),
        available: st.available_replicas.unwrap_or(0),
        observed: observed(d.metadata.generation, st.observed_generation),
        old_left: (st.replicas.unwrap_or(0) - desired).max(0),
    }
}

/// A Deployment's conditions that say why it is stuck (status False), e.g.
/// `Progressing: ProgressDeadlineExceeded: ...`.
pub fn deployment_problems(d: &Deployment) -> Vec<String> {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.status == "False")
        .map(|c| {
            format!(
                "{}: {}: {}",
                c.type_,
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        install::{render::render_documents, ValueSources, Values},
        k8s::apply::objects,
    };
    use serde_json::json;

    fn rendered(set: &[&str]) -> Vec<Object> {
        let v = Values::load(&ValueSources {
            set: set.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap();
        objects(&render_documents(&v, "kube-system").unwrap(), "kube-system").unwrap()
    }

    fn live_of(objs: &[Object]) -> BTreeMap<String, Value> {
        objs.iter()
            .map(|o| {
                let mut j = o.json();
                // What the server adds must not count as a change.
                j["metadata"]["resourceVersion"] = json!("7");
                j["status"] = json!({"observedGeneration": 1});
                (o.r.to_string(), j)
            })
            .collect()
    }

    #[test]
    fn the_same_render_is_unchanged_and_a_new_value_changes_exactly_its_objects() {
        let old = rendered(&[]);
        let live = live_of(&old);
        let plan = Plan::new(old.clone(), Some(&old), &live);
        assert!(plan.is_noop(), "{:?}", plan.lines());

        let new = rendered(&["debug.enabled=true"]);
        let plan = Plan::new(new, Some(&old), &live);
        let changed: Vec<String> = plan
            .steps
            .iter()
            .filter(|s| matches!(s.change, Change::Changed(_)))
            .map(|s| s.object.r.to_string())
            .collect();
        // The ConfigMap, and the workloads through its checksum annotation.
        assert_eq!(
            changed,
            [
                "ConfigMap kube-system/cilium-config",
                "DaemonSet kube-system/cilium",
                "Deployment kube-system/cilium-operator"
            ]
        );
        let cm = plan
            .lines()
            .into_iter()
            .find(|l| l.contains("cilium-config"))
            .unwrap();
        assert!(cm.contains("data.debug"), "{cm}");
        assert_eq!(plan.counts(), [12, 3, 0, 0]);
    }

    #[test]
    fn objects_no_longer_rendered_are_removed_and_missing_ones_added() {
        let old = rendered(&[]);
        let mut live = live_of(&old);
        live.remove("ServiceAccount kube-system/cilium");
        let new = rendered(&["operator.enabled=false,ipam.mode=kubernetes"]);
        let plan = Plan::new(new, Some(&old), &live);
        let of = |c: Change| -> Vec<String> {
            plan.steps
                .iter()
                .filter(|s| s.change == c)
                .map(|s| s.object.r.to_string())
                .collect()
        };
        assert_eq!(of(Change::Added), ["ServiceAccount kube-system/cilium"]);
        assert_eq!(
            of(Change::Removed),
            [
                "Deployment kube-system/cilium-operator",
                "ClusterRoleBinding cilium-operator",
                "ClusterRole cilium-operator",
                "ServiceAccount kube-system/cilium-operator",
            ],
            "in reverse apply order"
        );
    }

    #[test]
    fn without_a_record_the_cluster_is_compared_and_drift_is_a_change() {
        let objs = rendered(&[]);
        let mut live = live_of(&objs);
        assert!(Plan::new(objs.clone(), None, &live).is_noop());
        let ds = live.get_mut("DaemonSet kube-system/cilium").unwrap();
        ds["spec"]["template"]["spec"]["containers"][0]["image"] = json!("someone/else:1");
        let plan = Plan::new(objs, None, &live);
        let line = plan
            .lines()
            .into_iter()
            .find(|l| l.starts_with("changed"))
            .unwrap();
        assert!(
            line.contains("DaemonSet kube-system/cilium: spec.template.spec.containers[0].image (on the cluster)"),
            "{line}"
        );
    }

    #[test]
    fn rollout_is_done_when_observed_updated_and_available() {
        let ds = |gen: i64, obs: i64, upd: i32, avail: i32| -> DaemonSet {
            serde_json::from_value(json!({
                "metadata": {"name": "cilium", "generation": gen},
                "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3,
                    "numberMisscheduled": 0, "numberReady": avail, "numberAvailable": avail,
                    "updatedNumberScheduled": upd, "observedGeneration": obs}
            }))
            .unwrap()
        };
        assert!(
            !daemon_set(&ds(2, 1, 3, 3)).done(),
            "old generation's counts"
        );
        assert!(!daemon_set(&ds(2, 2, 1, 2)).done());
        assert!(
            !daemon_set(&ds(2, 2, 3, 2)).done(),
            "last node not available"
        );
        assert!(daemon_set(&ds(2, 2, 3, 3)).done());
        assert_eq!(
            daemon_set(&ds(2, 2, 1, 2)).summary(),
            "DaemonSet cilium: 1/3 updated, 2/3 available"
        );
        let dep: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "cilium-operator", "generation": 4},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"replicas": 3, "updatedReplicas": 2, "availableReplicas": 2,
                "observedGeneration": 4, "conditions": [
                    {"type": "Progressing", "status": "False",
                     "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}
        }))
        .unwrap();
        let r = deployment(&dep);
        assert!(!r.done() && r.old_left == 1, "{r:?}");
        assert_eq!(
            deployment_problems(&dep),
            ["Progressing: ProgressDeadlineExceeded: too slow"]
        );
    }
}
