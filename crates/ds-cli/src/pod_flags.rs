//! The pod-level flags of `ds deployment create` and `update` (issue 16): accelerators,
//! image pull secrets, Ingress TLS and annotations, command and arguments, scheduling,
//! probes; and how `get` shows them.
//!
//! A multi-word command is given one word per `--command` (repeatable, in order), and the
//! arguments one per `--arg`, as a pod's `command`/`args` lists hold them: nothing is
//! split on spaces, so a word may hold spaces or start with `-` (`--arg --port=8501`).

use super::parse;
use clap::Args;
use ds_core::proto;
use ds_core::{DeploymentSpec, Toleration};
use std::time::Duration;

/// `create`'s pod-level flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Pod options")]
pub struct PodCreateArgs {
    /// Accelerators (GPUs) for the model container, as its limit and request; not for
    /// the proxy sidecar.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gpu: u32,
    /// The extended resource --gpu counts (default nvidia.com/gpu), e.g. amd.com/gpu.
    #[arg(long, value_name = "NAME")]
    pub gpu_resource: Option<String>,
    /// Secret to pull the image with, in the deployment's namespace (repeatable).
    #[arg(long = "image-pull-secret", value_name = "NAME")]
    pub image_pull_secrets: Vec<String>,
    /// Secret with the TLS certificate for --host (the Ingress serves https://).
    #[arg(long, value_name = "NAME")]
    pub tls_secret: Option<String>,
    /// Annotation `KEY=VALUE` on the Ingress only, e.g. for cert-manager (repeatable).
    #[arg(long = "ingress-annotation", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub ingress_annotations: Vec<(String, String)>,
    /// The model container's command, one word per flag (repeatable, in order):
    /// `--command python --command -m --command server`.
    #[arg(long = "command", value_name = "WORD", allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// An argument of the model container (repeatable, in order): `--arg --port=8501`.
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Node label `KEY=VALUE` the pods must run on (repeatable).
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub node_selector: Vec<(String, String)>,
    /// Taint the pods tolerate, `KEY[=VALUE]:EFFECT` with EFFECT NoSchedule,
    /// PreferNoSchedule or NoExecute (repeatable).
    #[arg(long = "toleration", value_name = "KEY[=VALUE]:EFFECT", value_parser = Toleration::parse)]
    pub tolerations: Vec<Toleration>,
    /// The pods' PriorityClass (it must exist in the cluster).
    #[arg(long, value_name = "NAME")]
    pub priority_class: Option<String>,
    /// HTTP path that answers once the model can serve, e.g. `/v1/models/iris`: the
    /// proxy's /readyz asks it, or (with --no-proxy) the model's readiness probe.
    #[arg(long, value_name = "PATH")]
    pub ready_path: Option<String>,
    /// How long the model may take to load (e.g. `10m`): a startup probe holds off
    /// readiness and liveness until then.
    #[arg(long, value_name = "DURATION", value_parser = ds_core::duration::parse)]
    pub startup_timeout: Option<Duration>,
}

/// `update`'s pod-level flags: absent flags leave their option as it is.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Pod options")]
pub struct PodUpdateArgs {
    /// New accelerator count of the model container; 0 removes them.
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,
    /// New extended resource for --gpu; `""` means nvidia.com/gpu.
    #[arg(long, value_name = "NAME")]
    pub gpu_resource: Option<String>,
    /// Image pull secrets: the given ones replace the list (repeatable).
    #[arg(long = "image-pull-secret", value_name = "NAME")]
    pub image_pull_secrets: Vec<String>,
    /// Remove every image pull secret.
    #[arg(long, conflicts_with = "image_pull_secrets")]
    pub clear_image_pull_secrets: bool,
    /// New TLS secret of the Ingress; `""` serves plain HTTP again.
    #[arg(long, value_name = "NAME")]
    pub tls_secret: Option<String>,
    /// Set Ingress annotation `KEY=VALUE` (repeatable; replaces by key).
    #[arg(long = "ingress-annotation", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub ingress_annotations: Vec<(String, String)>,
    /// Remove Ingress annotation KEY (repeatable).
    #[arg(long = "unset-ingress-annotation", value_name = "KEY")]
    pub unset_ingress_annotations: Vec<String>,
    /// New command, one word per flag: the given words replace it (repeatable).
    #[arg(long = "command", value_name = "WORD", allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Go back to the image's own command.
    #[arg(long, conflicts_with = "command")]
    pub clear_command: bool,
    /// New arguments, one per flag: the given ones replace them (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Go back to the image's own arguments.
    #[arg(long, conflicts_with = "args")]
    pub clear_args: bool,
    /// Set node selector label `KEY=VALUE` (repeatable; replaces by key).
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub node_selector: Vec<(String, String)>,
    /// Remove node selector KEY (repeatable).
    #[arg(long = "unset-node-selector", value_name = "KEY")]
    pub unset_node_selector: Vec<String>,
    /// Tolerations `KEY[=VALUE]:EFFECT`: the given ones replace the list (repeatable).
    #[arg(long = "toleration", value_name = "KEY[=VALUE]:EFFECT", value_parser = Toleration::parse)]
    pub tolerations: Vec<Toleration>,
    /// Remove every toleration.
    #[arg(long, conflicts_with = "tolerations")]
    pub clear_tolerations: bool,
    /// New PriorityClass; `""` removes it.
    #[arg(long, value_name = "NAME")]
    pub priority_class: Option<String>,
    /// New readiness path; `""` goes back to a TCP check of the port.
    #[arg(long, value_name = "PATH")]
    pub ready_path: Option<String>,
    /// New startup timeout (e.g. `10m`); `0` removes the startup probe.
    #[arg(long, value_name = "DURATION", value_parser = ds_core::duration::parse)]
    pub startup_timeout: Option<Duration>,
}

/// `KEY=VALUE` for annotations and node selectors (the value may hold `=`).
fn parse_pair(text: &str) -> Result<(String, String), String> {
    parse::parse_label(text).map_err(|_| "expected KEY=VALUE".to_string())
}

/// Whole seconds, rounded up (`500ms` is one second, not none); beyond `u32` the largest,
/// which validation refuses naming the flag.
fn seconds(d: Duration) -> u32 {
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(whole).unwrap_or(u32::MAX)
}

impl PodCreateArgs {
    /// Puts the flags' options into `spec`.
    pub fn fill(&self, spec: &mut DeploymentSpec) {
        spec.gpu = self.gpu;
        spec.gpu_resource = self.gpu_resource.clone().filter(|r| !r.is_empty());
        spec.image_pull_secrets.clone_from(&self.image_pull_secrets);
        spec.tls_secret = self.tls_secret.clone().filter(|s| !s.is_empty());
        spec.ingress_annotations = self.ingress_annotations.iter().cloned().collect();
        spec.command.clone_from(&self.command);
        spec.args.clone_from(&self.args);
        spec.node_selector = self.node_selector.iter().cloned().collect();
        spec.tolerations.clone_from(&self.tolerations);
        spec.priority_class = self.priority_class.clone().filter(|c| !c.is_empty());
        spec.ready_path = self.ready_path.clone().filter(|p| !p.is_empty());
        spec.startup_timeout_seconds = self.startup_timeout.map_or(0, seconds);
    }
}

impl PodUpdateArgs {
    /// Puts the flags' changes into `req`; whether there is any.
    pub fn fill(&self, req: &mut proto::UpdateDeploymentRequest) -> bool {
        let list = |given: &[String], clear: bool| {
            (clear || !given.is_empty()).then(|| proto::StringList {
                values: given.to_vec(),
            })
        };
        req.gpu = self.gpu;
        req.gpu_resource.clone_from(&self.gpu_resource);
        req.image_pull_secrets = list(&self.image_pull_secrets, self.clear_image_pull_secrets);
        req.tls_secret.clone_from(&self.tls_secret);
        req.set_ingress_annotations = self.ingress_annotations.iter().cloned().collect();
        req.unset_ingress_annotations
            .clone_from(&self.unset_ingress_annotations);
        req.command = list(&self.command, self.clear_command);
        req.args = list(&self.args, self.clear_args);
        req.set_node_selector = self.node_selector.iter().cloned().collect();
        req.unset_node_selector
            .clone_from(&self.unset_node_selector);
        req.tolerations = (self.clear_tolerations || !self.tolerations.is_empty()).then(|| {
            proto::TolerationList {
                values: self.tolerations.iter().cloned().map(Into::into).collect(),
            }
        });
        req.priority_class.clone_from(&self.priority_class);
        req.ready_path.clone_from(&self.ready_path);
        req.startup_timeout_seconds = self.startup_timeout.map(seconds);
        req.gpu.is_some()
            || req.gpu_resource.is_some()
            || req.image_pull_secrets.is_some()
            || req.tls_secret.is_some()
            || !req.set_ingress_annotations.is_empty()
            || !req.unset_ingress_annotations.is_empty()
            || req.command.is_some()
            || req.args.is_some()
            || !req.set_node_selector.is_empty()
            || !req.unset_node_selector.is_empty()
            || req.tolerations.is_some()
            || req.priority_class.is_some()
            || req.ready_path.is_some()
            || req.startup_timeout_seconds.is_some()
    }
}

/// A word list as a shell would read it back: words with spaces (or empty) quoted.
fn words(list: &[String]) -> String {
    list.iter()
        .map(|w| {
            if w.is_empty()
                || w.chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\'')
            {
                format!("{w:?}")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pairs<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    map.into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `ds deployment get` lines of the options that are set (none for the others).
pub fn shown(s: &DeploymentSpec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if s.gpu > 0 {
        out.push(("GPUs", format!("{} {}", s.gpu, s.gpu_resource_name())));
    }
    if !s.image_pull_secrets.is_empty() {
        out.push(("Pull secrets", s.image_pull_secrets.join(", ")));
    }
    if let Some(secret) = &s.tls_secret {
        out.push(("TLS secret", secret.clone()));
    }
    if !s.ingress_annotations.is_empty() {
        out.push(("Ingress annotations", pairs(&s.ingress_annotations)));
    }
    if !s.command.is_empty() {
        out.push(("Command", words(&s.command)));
    }
    if !s.args.is_empty() {
        out.push(("Args", words(&s.args)));
    }
    if !s.node_selector.is_empty() {
        out.push(("Node selector", pairs(&s.node_selector)));
    }
    if !s.tolerations.is_empty() {
        let list: Vec<String> = s.tolerations.iter().map(ToString::to_string).collect();
        out.push(("Tolerations", list.join(", ")));
    }
    if let Some(class) = &s.priority_class {
        out.push(("Priority class", class.clone()));
    }
    if let Some(path) = &s.ready_path {
        out.push(("Ready path", path.clone()));
    }
    if s.startup_timeout_seconds > 0 {
        let d = Duration::from_secs(u64::from(s.startup_timeout_seconds));
        out.push(("Startup timeout", ds_core::duration::format(d)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(seconds(Duration::from_millis(500)), 1);
        assert_eq!(seconds(Duration::from_secs(600)), 600);
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn get_shows_only_the_options_that_are_set() {
        assert!(shown(&DeploymentSpec::test("iris")).is_empty());
        let mut s = DeploymentSpec::test("iris");
        s.gpu = 2;
        s.command = vec!["sh".into(), "-c".into(), "exec serve --fast".into()];
        s.startup_timeout_seconds = 600;
        let lines = shown(&s);
        assert_eq!(
            lines,
            [
                ("GPUs", "2 nvidia.com/gpu".to_string()),
                ("Command", "sh -c \"exec serve --fast\"".to_string()),
                ("Startup timeout", "10m".to_string()),
            ]
        );
    }
}
