//! Strict deserialization into Kubernetes types: k8s-openapi ignores unknown fields, so a
//! typo (`tolerations[0].efect`) would vanish silently. Deserialize, serialize again, and
//! name every field that did not survive.
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// `json` as a `T`, or an error naming the fields `T` does not have (or changed).
pub fn from_json<T: DeserializeOwned + Serialize>(json: &Value) -> Result<T, String> {
    let t: T = serde_json::from_value(json.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    let lost = differences(json, &back);
    if lost.is_empty() {
        Ok(t)
    } else {
        Err(format!(
            "unknown or malformed field(s): {}",
            lost.join(", ")
        ))
    }
}

/// Paths where `original` and `roundtrip` differ: fields missing after the round trip
/// (unknown to the type) or values that changed. Null fields count as absent.
pub fn differences(original: &Value, roundtrip: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff(original, roundtrip, "", &mut out);
    out
}

fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(ao), Value::Object(bo)) => {
            for (k, av) in ao {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match bo.get(k) {
                    None if av.is_null() => {}
                    None => out.push(p),
                    Some(bv) => diff(av, bv, &p, out),
                }
            }
            for (k, bv) in bo {
                if !ao.contains_key(k) && !bv.is_null() {
                    out.push(format!("{path}.{k} (added)"));
                }
            }
        }
        (Value::Array(aa), Value::Array(ba)) if aa.len() == ba.len() => {
            for (i, (av, bv)) in aa.iter().zip(ba).enumerate() {
                diff(av, bv, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path} (changed)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;
    use serde_json::json;

    #[test]
    fn names_unknown_fields() {
        let t: Toleration = from_json(&json!({"operator": "Exists"})).expect("valid");
        assert_eq!(t.operator.as_deref(), Some("Exists"));
        let e = from_json::<Toleration>(&json!({"operator": "Exists", "efect": "NoSchedule"}))
            .expect_err("typo");
        assert!(e.contains("efect"), "{e}");
        assert!(from_json::<Toleration>(&json!({"tolerationSeconds": "x"})).is_err());
    }
}
