//! Every rendered object is a valid object of its Kubernetes kind (API 1.33, k8s-openapi): it
//! deserializes into the typed struct and serializes back to exactly what the chart rendered.
//! A misspelt or misplaced field is dropped by the round trip and shows up as a difference.

use lodger_chart_tests::render;
use serde_json::Value;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    obj: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Paths where `a` has something `b` lacks or holds differently.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => differences(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k} (dropped: not a field here)")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: rendered {a}, typed {b}")),
    }
}

fn check(obj: &Value) -> Result<(), String> {
    use k8s_openapi::api::admissionregistration::v1 as adm;
    use k8s_openapi::api::apps::v1 as apps;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::networking::v1 as net;
    use k8s_openapi::api::rbac::v1 as rbac;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    let kind = obj["kind"].as_str().unwrap_or_default();
    let typed = match kind {
        "ServiceAccount" => round_trip::<core::ServiceAccount>(obj),
        "Service" => round_trip::<core::Service>(obj),
        "PersistentVolumeClaim" => round_trip::<core::PersistentVolumeClaim>(obj),
        "PersistentVolume" => round_trip::<core::PersistentVolume>(obj),
        "ConfigMap" => round_trip::<core::ConfigMap>(obj),
        "Deployment" => round_trip::<apps::Deployment>(obj),
        "DaemonSet" => round_trip::<apps::DaemonSet>(obj),
        "ClusterRole" => round_trip::<rbac::ClusterRole>(obj),
        "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(obj),
        "Role" => round_trip::<rbac::Role>(obj),
        "RoleBinding" => round_trip::<rbac::RoleBinding>(obj),
        "NetworkPolicy" => round_trip::<net::NetworkPolicy>(obj),
        "ValidatingAdmissionPolicy" => round_trip::<adm::ValidatingAdmissionPolicy>(obj),
        "ValidatingAdmissionPolicyBinding" => {
            round_trip::<adm::ValidatingAdmissionPolicyBinding>(obj)
        }
        "CustomResourceDefinition" => round_trip::<ext::CustomResourceDefinition>(obj),
        // monitoring.coreos.com/v1 has no type here; its shape is checked in chart.rs.
        "ServiceMonitor" => return Ok(()),
        other => return Err(format!("no typed check for kind {other}: add one")),
    }?;
    let mut diffs = Vec::new();
    differences("", obj, &typed, &mut diffs);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("\n  "))
    }
}

/// Every object the chart renders, with every value set the tests use, survives a round trip
/// through its Kubernetes 1.33 type unchanged.
/// If this fails, the chart renders a field the API server would reject or silently drop
/// (e.g. a misplaced securityContext key), which `helm lint` does not notice.
#[test]
fn rendered_objects_are_valid_kubernetes_objects() {
    let sets: &[&[(&str, &str)]] = &[
        &[],
        &[("agent.detection.enabled", "false")],
        &[("agent.detection.inputAccess", "privileged")],
        &[
            ("agent.detection.inputAccess", "devicePlugin"),
            ("agent.detection.devicePluginResource", "squat.ai/input"),
        ],
        &[("metrics.serviceMonitor.enabled", "true")],
        &[("checkpoints.existingClaim", "shared")],
        &[
            ("checkpoints.sharedSource.nfs.server", "nas"),
            ("checkpoints.sharedSource.nfs.path", "/x"),
            ("checkpoints.jobNamespaces[0]", "batch"),
            ("networkPolicy.apiServerCIDRs[0]", "10.0.0.1/32"),
            ("networkPolicy.metricsFromNamespaces[0]", "monitoring"),
            ("operator.tolerations[0].key", "dedicated"),
            ("operator.tolerations[0].operator", "Exists"),
            ("agent.tolerations[0].key", "gpu"),
            ("agent.tolerations[0].operator", "Exists"),
            ("imagePullSecrets[0]", "regcred"),
            ("operator.priorityClassName", "system-cluster-critical"),
        ],
    ];
    for set in sets {
        for obj in render(set) {
            if let Err(why) = check(&obj) {
                panic!(
                    "{} {} (values {set:?}) is not a valid object of its kind:\n  {why}",
                    obj["kind"], obj["metadata"]["name"]
                );
            }
        }
    }
}

/// The round trip catches a misplaced field (so the test above can fail).
/// If this fails, the check above proves nothing.
#[test]
fn round_trip_catches_a_misplaced_field() {
    let mut objects = render(&[]);
    let d = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .expect("the operator Deployment");
    d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] =
        Value::Bool(true);
    let err = check(d).expect_err("a misspelt field must be caught");
    assert!(err.contains("runAsNonRot"), "{err}");
}
