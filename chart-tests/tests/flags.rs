//! The chart and the binaries agree: every `--flag` the chart passes to the operator and the
//! node agent is one the binary accepts (read from its `--help`), and the binary accepts the
//! whole rendered argument list.

use std::process::Command;

use lodger_chart_tests::{binary, container, flags, get, render};

fn help_flags(bin: &std::path::Path) -> Vec<String> {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{} --help failed", bin.display());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.split('=')
                .next()
                .unwrap_or(w)
                .trim_end_matches(['.', ':'])
                .to_string()
        })
        .collect()
}

/// Every flag in the operator's and the agent's rendered args exists in that binary, for every
/// detection mode.
/// If this fails, the chart passes a flag the binary does not know: the pod would crash-loop at
/// start with a clap usage error.
#[test]
fn chart_flags_exist_in_binaries() {
    let sets: &[&[(&str, &str)]] = &[
        &[],
        &[("agent.detection.enabled", "false")],
        &[("agent.detection.inputAccess", "privileged")],
        &[("agent.detection.logind", "false")],
        &[
            ("imagePullSecrets[0]", "regcred"),
            ("imagePullSecrets[1]", "mirror.lab"),
            ("image.pullPolicy", "Always"),
        ],
    ];
    for set in sets {
        let objects = render(set);
        for (kind, workload, name, package, bin) in [
            (
                "Deployment",
                "lodger-operator",
                "operator",
                "lodger-operator",
                "lodger-operator",
            ),
            (
                "DaemonSet",
                "lodger-node-agent",
                "node-agent",
                "lodger-node-agent",
                "lodger-node-agent",
            ),
        ] {
            let c = container(get(&objects, kind, workload), name);
            assert_eq!(c["command"][0], bin, "{workload} runs {bin}");
            let known = help_flags(&binary(package, bin));
            for flag in flags(c) {
                assert!(
                    known.contains(&flag),
                    "{bin} has no {flag} (chart values {set:?}); it knows {known:?}"
                );
            }
        }
    }
}

/// The operator's and the agent's binaries parse the rendered args as a whole (values
/// included); `--version` at the end makes them exit right after parsing, without an API server.
/// If this fails, a flag's value (not only its name) is one the binary refuses.
#[test]
fn binaries_accept_rendered_args() {
    let objects = render(&[]);
    for (kind, workload, name, package, bin) in [
        (
            "Deployment",
            "lodger-operator",
            "operator",
            "lodger-operator",
            "lodger-operator",
        ),
        (
            "DaemonSet",
            "lodger-node-agent",
            "node-agent",
            "lodger-node-agent",
            "lodger-node-agent",
        ),
    ] {
        let c = container(get(&objects, kind, workload), name);
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().replace("$(NODE_NAME)", "desk-1"))
            .collect();
        let out = Command::new(binary(package, bin))
            .args(&args)
            .arg("--version")
            .output()
            .expect("the binary runs");
        assert!(
            out.status.success(),
            "{bin} refused the chart's args {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
