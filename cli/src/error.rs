//! The plugin's errors: each says what went wrong and what to do, and maps to an exit code.

use std::fmt::Write as _;

/// Errors of `kubectl lodger`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments that parse but make no sense together.
    #[error("{0}")]
    Invalid(String),
    /// No usable kubeconfig or in-cluster configuration.
    #[error(
        "no Kubernetes configuration found ({0}).\nSet KUBECONFIG=/path/to/kubeconfig, pass --kubeconfig FILE, or create ~/.kube/config (for example with `kind create cluster`, or by copying /etc/rancher/k3s/k3s.yaml)."
    )]
    NoConfig(String),
    /// The named context or kubeconfig could not be used.
    #[error(
        "failed to load the kubeconfig: {0}\nList contexts with `kubectl config get-contexts`."
    )]
    Kubeconfig(String),
    /// A MigratableJob that does not exist.
    #[error(
        "migratablejob \"{job}\" not found in namespace \"{namespace}\" (list them with `kubectl lodger ps -n {namespace}`)"
    )]
    JobNotFound { job: String, namespace: String },
    /// A request the API server refused or could not answer.
    #[error("{}", describe_api_error(.action, .source))]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// Sending a signal failed.
    #[error(transparent)]
    Signal(#[from] lodger_stub::forward::SendError),
    /// Reading the job's output failed.
    #[error(transparent)]
    Output(#[from] lodger_stub::output::OutputError),
    /// Writing our own output failed.
    #[error("failed to write output: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// Exit code: 2 for arguments that make no sense, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) => 2,
            _ => 1,
        }
    }

    /// Wraps an API error with what we were doing ("list migratablejobs in namespace x").
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CliError {
        let action = action.into();
        move |source| CliError::Api { action, source }
    }
}

fn describe_api_error(action: &str, err: &kube::Error) -> String {
    let mut msg = format!("failed to {action}: ");
    match err {
        kube::Error::Api(status) => {
            let _ = write!(msg, "{}", status.message);
            let hint = match status.code {
                401 => Some("your credentials were refused: check the kubeconfig's user (`kubectl config view --minify`)".to_string()),
                403 => Some("ask your cluster admin for the RBAC this command needs (see docs/kubectl-lodger.md, \"Permissions\")".to_string()),
                404 if msg.contains("the server could not find the requested resource") => Some(
                    "Lodger's CRDs are not installed: `kubectl apply -f crds/` or install the chart (`helm install lodger charts/lodger`)".to_string(),
                ),
                _ => None,
            };
            if let Some(h) = hint {
                let _ = write!(msg, "\n{h}");
            }
        }
        other => {
            let _ = write!(
                msg,
                "{other}\nIs the cluster reachable? Check with `kubectl cluster-info`."
            );
        }
    }
    msg
}
