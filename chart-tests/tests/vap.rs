//! The node agent's ValidatingAdmissionPolicy, evaluated: the rendered policy's match
//! conditions, variables and validations run in a CEL interpreter (the `cel` crate with the
//! Kubernetes CEL libraries, via kube-cel) against admission requests shaped as the API server
//! builds them, with real Node objects as `object`/`oldObject`.
//!
//! What this cannot show: the API server's own CEL (cel-go) and cost limits; that the
//! projected token really carries `authentication.kubernetes.io/node-name` (the e2e suite on a
//! real cluster covers that).

use std::collections::HashMap;

use kube_cel::KubeCelExt;
use kube_cel::cel::{Context, Program, Value as Cel};
use lodger_chart_tests::{NAMESPACE, get, render};
use serde_json::{Value, json};

const AGENT_USER: &str = "system:serviceaccount:lodger-system:lodger-node-agent";

/// The outcome of one admission request.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The policy does not apply (match condition false).
    NotMatched,
    /// Every validation passed.
    Allowed,
    /// Denied: the messages of the failed validations.
    Denied(Vec<String>),
}

struct Request {
    operation: &'static str,
    username: &'static str,
    node_name: Option<&'static str>,
    sub_resource: &'static str,
    object: Value,
    old_object: Value,
}

fn policy() -> Value {
    let objects = render(&[]);
    get(
        &objects,
        "ValidatingAdmissionPolicy",
        "lodger-node-agent-own-node",
    )["spec"]
        .clone()
}

fn eval(ctx: &Context, expr: &str) -> Result<Cel, String> {
    let program = Program::compile(expr).map_err(|e| format!("does not compile: {expr}: {e}"))?;
    program
        .execute(ctx)
        .map_err(|e| format!("evaluation error in {expr}: {e}"))
}

fn admit(policy: &Value, req: &Request) -> Verdict {
    let mut ctx = Context::default();
    ctx.register_all();
    let mut extra = serde_json::Map::new();
    if let Some(node) = req.node_name {
        extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            json!([node]),
        );
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            json!(["lodger-node-agent-x1"]),
        );
    }
    let request = json!({
        "operation": req.operation,
        "subResource": req.sub_resource,
        "name": req.object["metadata"]["name"],
        "namespace": "",
        "userInfo": {
            "username": req.username,
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": extra,
        },
    });
    ctx.add_variable("request", &request).unwrap();
    ctx.add_variable("object", &req.object).unwrap();
    ctx.add_variable("oldObject", &req.old_object).unwrap();

    for cond in policy["matchConditions"].as_array().unwrap() {
        match eval(&ctx, cond["expression"].as_str().unwrap()) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => return Verdict::NotMatched,
            other => panic!("match condition did not evaluate to a bool: {other:?}"),
        }
    }
    // Variables are evaluated in order; each may use the earlier ones.
    let mut vars: HashMap<String, Cel> = HashMap::new();
    for var in policy["variables"].as_array().unwrap() {
        let value = eval(&ctx, var["expression"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("variable {}: {e}", var["name"]));
        vars.insert(var["name"].as_str().unwrap().to_string(), value);
        ctx.add_variable_from_value("variables", vars.clone());
    }
    let mut denied = Vec::new();
    for v in policy["validations"].as_array().unwrap() {
        match eval(&ctx, v["expression"].as_str().unwrap()) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => {
                let message = v["messageExpression"]
                    .as_str()
                    .and_then(|m| match eval(&ctx, m) {
                        Ok(Cel::String(s)) => Some(s.to_string()),
                        _ => None,
                    })
                    .or_else(|| v["message"].as_str().map(str::to_string))
                    .unwrap();
                denied.push(message);
            }
            // failurePolicy: Fail turns an evaluation error into a denial.
            Ok(other) => denied.push(format!("non-boolean result {other:?}")),
            Err(e) => denied.push(format!("error: {e}")),
        }
    }
    if denied.is_empty() {
        Verdict::Allowed
    } else {
        Verdict::Denied(denied)
    }
}

fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "lodger.dev/workstation": "true",
                "lodger.dev/owner": "ada",
                "lodger.dev/idle": "false",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24"],
            "providerID": "kind://docker/kind/".to_string() + name,
            "taints": [{"key": "example.com/gpu", "value": "none", "effect": "NoSchedule"}],
        },
        "status": {"nodeInfo": {"kubeletVersion": "v1.33.1"}},
    })
}

fn agent_update(name: &'static str, old: Value, new: Value) -> Request {
    Request {
        operation: "UPDATE",
        username: AGENT_USER,
        node_name: Some(name),
        sub_resource: "",
        object: new,
        old_object: old,
    }
}

fn set_idle(mut n: Value) -> Value {
    n["metadata"]["labels"]["lodger.dev/idle"] = json!("true");
    n["metadata"]["annotations"]["lodger.dev/idle-since"] = json!("2026-11-22T10:00:00Z");
    n
}

fn add_owner_taint(mut n: Value) -> Value {
    n["spec"]["taints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "lodger.dev/owner-active", "effect": "NoSchedule"}));
    n
}

fn denied_with(verdict: Verdict, needle: &str) {
    match verdict {
        Verdict::Denied(msgs) => assert!(
            msgs.iter().any(|m| m.contains(needle)),
            "denied, but no message mentions {needle:?}: {msgs:?}"
        ),
        other => panic!("expected a denial mentioning {needle:?}, got {other:?}"),
    }
}

/// The agent may flip its own node's idle label and idle-since annotation and add or remove
/// the owner-active taint, and nothing else is refused along the way.
/// If this fails, the policy would stop the agent from doing its one job.
#[test]
fn agent_may_report_on_its_own_node() {
    let p = policy();
    let old = node("desk-1");
    assert_eq!(
        admit(
            &p,
            &agent_update("desk-1", old.clone(), set_idle(old.clone()))
        ),
        Verdict::Allowed
    );
    let tainted = add_owner_taint(old.clone());
    assert_eq!(
        admit(&p, &agent_update("desk-1", old.clone(), tainted.clone())),
        Verdict::Allowed
    );
    assert_eq!(
        admit(&p, &agent_update("desk-1", tainted, old.clone())),
        Verdict::Allowed
    );
    // Removing the idle label and annotation entirely is allowed too.
    let idle = set_idle(old.clone());
    let mut cleared = idle.clone();
    cleared["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("lodger.dev/idle");
    cleared["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("lodger.dev/idle-since");
    assert_eq!(
        admit(&p, &agent_update("desk-1", idle, cleared)),
        Verdict::Allowed
    );
    // Re-ordering the other taints (a server-side apply of the whole list may) is no change.
    let mut two = add_owner_taint(old.clone());
    two["spec"]["taints"].as_array_mut().unwrap().insert(
        0,
        json!({"key": "example.com/disk", "value": "ssd", "effect": "PreferNoSchedule"}),
    );
    let mut reordered = two.clone();
    reordered["spec"]["taints"]
        .as_array_mut()
        .unwrap()
        .reverse();
    assert_eq!(
        admit(&p, &agent_update("desk-1", two, reordered)),
        Verdict::Allowed
    );
    // A node that had no labels, annotations or taints at all.
    let bare = json!({"metadata": {"name": "desk-1"}, "spec": {}});
    let mut reported = bare.clone();
    reported["metadata"]["labels"] = json!({"lodger.dev/idle": "true"});
    reported["spec"]["taints"] =
        json!([{"key": "lodger.dev/owner-active", "effect": "NoSchedule"}]);
    assert_eq!(
        admit(&p, &agent_update("desk-1", bare, reported)),
        Verdict::Allowed
    );
}

/// The agent on desk-1 may not change desk-2, even only its idle label.
/// If this fails, one compromised workstation could mark every other one busy or idle.
#[test]
fn agent_may_not_touch_another_node() {
    let p = policy();
    let old = node("desk-2");
    denied_with(
        admit(&p, &agent_update("desk-1", old.clone(), set_idle(old))),
        "may not change node desk-2",
    );
}

/// A token without the node-name claim (minted by hand, or an old cluster) is refused.
/// If this fails, the per-node restriction could be bypassed with a non-pod token.
#[test]
fn agent_without_node_claim_is_refused() {
    let p = policy();
    let old = node("desk-1");
    let mut req = agent_update("desk-1", old.clone(), set_idle(old));
    req.node_name = None;
    denied_with(admit(&p, &req), "authentication.kubernetes.io/node-name");
}

/// Other labels, annotations and taints, cordoning and finalizers stay out of the agent's reach.
/// If this fails, the agent could relabel (e.g. make itself a workstation of another owner),
/// untaint or uncordon its node.
#[test]
fn agent_may_change_nothing_else() {
    let p = policy();
    let old = node("desk-1");

    let mut n = old.clone();
    n["metadata"]["labels"]["lodger.dev/owner"] = json!("mallory");
    denied_with(
        admit(&p, &agent_update("desk-1", old.clone(), n)),
        "only the lodger.dev/idle label",
    );

    let mut n = old.clone();
    n["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("lodger.dev/workstation");
    denied_with(
        admit(&p, &agent_update("desk-1", old.clone(), n)),
        "only the lodger.dev/idle label",
    );

    let mut n = old.clone();
    n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
    denied_with(
        admit(&p, &agent_update("desk-1", old.clone(), n)),
        "only the lodger.dev/idle label",
    );

    let mut n = old.clone();
    n["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = json!("30");
    denied_with(
        admit(&p, &agent_update("desk-1", old.clone(), n)),
        "idle-since annotation",
    );

    let mut n = old.clone();
    n["spec"]["taints"] = json!([]);
    denied_with(
        admit(&p, &agent_update("desk-1", old.clone(), n)),
        "owner-active taint",
    );

    let mut n = old.clone();
    n["spec"]["taints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}));
    denied_with(
        admit(&p, &agent_update("desk-1", old.clone(), n)),
        "owner-active taint",
    );

    let mut n = old.clone();
    n["spec"]["unschedulable"] = json!(true);
    denied_with(admit(&p, &agent_update("desk-1", old.clone(), n)), "cordon");

    let mut cordoned = old.clone();
    cordoned["spec"]["unschedulable"] = json!(true);
    denied_with(
        admit(&p, &agent_update("desk-1", cordoned, old.clone())),
        "cordon",
    );

    let mut n = old.clone();
    n["metadata"]["finalizers"] = json!(["example.com/keep"]);
    denied_with(
        admit(&p, &agent_update("desk-1", old.clone(), n)),
        "finalizers",
    );
}

/// Creating, deleting or writing the status of a Node is refused to the agent outright.
/// If this fails, a widened RBAC role would let the agent forge or remove nodes.
#[test]
fn agent_may_not_create_delete_or_write_status() {
    let p = policy();
    let n = node("desk-1");
    let create = Request {
        operation: "CREATE",
        old_object: Value::Null,
        ..agent_update("desk-1", Value::Null, n.clone())
    };
    denied_with(admit(&p, &create), "may only update");
    let delete = Request {
        operation: "DELETE",
        object: Value::Null,
        ..agent_update("desk-1", n.clone(), Value::Null)
    };
    denied_with(admit(&p, &delete), "may only update");
    let status = Request {
        sub_resource: "status",
        ..agent_update("desk-1", n.clone(), set_idle(n))
    };
    denied_with(admit(&p, &status), "may only update");
}

/// The policy applies to the agent's ServiceAccount only: an admin (or the operator) relabelling
/// or tainting a node is not matched.
/// If this fails, the policy would block administrators and e2e tests.
#[test]
fn policy_ignores_everyone_else() {
    let p = policy();
    let old = node("desk-2");
    let mut n = old.clone();
    n["metadata"]["labels"]["lodger.dev/owner"] = json!("grace");
    for user in [
        "kubernetes-admin",
        "system:serviceaccount:lodger-system:lodger-operator",
        "system:serviceaccount:other:lodger-node-agent",
    ] {
        let req = Request {
            username: user,
            node_name: None,
            ..agent_update("desk-1", old.clone(), n.clone())
        };
        assert_eq!(
            admit(&p, &req),
            Verdict::NotMatched,
            "{user} must not be matched"
        );
    }
    assert!(AGENT_USER.contains(NAMESPACE));
}
