//! The kubectl-like commands: `ds deployer …`, `ds deployment …`, `ds login`.
//!
//! # Layout
//! - `config`: where the gateway address and API key come from (flags, `DS_*`, the
//!   0600 config file `ds login` writes).
//! - `client`: the gRPC connection and the mapping of gateway errors to one clear line.
//! - `output`: tables, `-o json|yaml`, kubectl-style ages.
//! - `deployer_cmd`, `deployment_cmd`: the subcommands.
//! - `stage_cmd`, `audit_cmd`: `ds stage …` and `ds audit ls`.
//! - `hook_cmd`: `ds hook add|ls|rm`, a deployer's pre- and post-deployment hooks.
//! - `inspect_cmd`: `ds deployment logs|describe`, answered by the deployer's agent.
//! - `wait`: `--wait`, following a deployment's status until it is Available.
//! - `parse`: flag value parsers (durations, `K=V`).
//! - `flags`: which CLI flag sets which spec field, to name flags in errors.
//! - `pod_flags`: the pod-level flags of create/update (GPUs, secrets, TLS, scheduling…).
//! - `storage_flags`: the model-from-storage flags of create/update (`--model-uri`…).
//! - `teams_cmd`: `ds user|apikey|group …` and `ds deployer grant|revoke`.
//! - `scale_flags`: the autoscaling and disruption-budget flags of create/update.
//! - `version`: `ds version`.
//! - `watch`: `ls -w` / `get -w`.
//! - `promote_cmd`: `ds deployment promote` (and the parsing of `ds deployer remap`).

mod audit_cmd;
mod client;
mod config;
mod deployer_cmd;
mod deployment_cmd;
mod flags;
mod history_cmd;
mod hook_cmd;
mod inspect_cmd;
mod output;
mod parse;
mod pod_flags;
mod promote_cmd;
mod scale_flags;
mod stage_cmd;
mod storage_flags;
mod teams_cmd;
mod version;
mod wait;
mod watch;

use clap::{Args, Subcommand};
use ds_core::ValidationError;
use ds_transport::SecretString;
use std::path::PathBuf;
use std::time::Duration;

pub use config::{Config, default_config_path};
pub use output::{OutputFormat, format_age};
pub use teams_cmd::{
    ApikeyArgs, ApikeyCommand, GroupArgs, GroupCommand, RoleArg, UserArgs, UserCommand,
};

// === arguments ===

/// Flags every command that talks to the gateway accepts, before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Gateway URL, e.g. `https://gateway.example.com:8800` (default: from `ds login`).
    #[arg(
        long,
        env = "DS_GATEWAY",
        global = true,
        help_heading = "Global options"
    )]
    pub gateway: Option<String>,
    /// API key (default: from `ds login`).
    #[arg(
        long,
        env = "DS_API_KEY",
        hide_env_values = true,
        global = true,
        help_heading = "Global options",
        value_parser = ds_transport::parse_secret
    )]
    pub api_key: Option<SecretString>,
    /// PEM CA bundle to trust for the gateway's TLS certificate, besides the system roots.
    #[arg(
        long,
        env = "DS_CA_CERT",
        global = true,
        help_heading = "Global options"
    )]
    pub ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, global = true, help_heading = "Global options")]
    pub output: OutputFormat,
}

/// `ds deployer …`
#[derive(Debug, Args)]
pub struct DeployerArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: DeployerCommand,
}

/// The deployer subcommands.
#[derive(Debug, Subcommand)]
pub enum DeployerCommand {
    /// Register a deployer; prints its token, shown only this once.
    Create {
        /// Deployer name (DNS-1123 label), e.g. `prod-eu-1`.
        name: String,
        /// The lifecycle stage it is in (default: the first stage; see `ds stage ls`).
        #[arg(long)]
        stage: Option<String>,
    },
    /// Change a deployer's settings; only the given flags change.
    Update {
        /// Deployer name or ID.
        deployer: String,
        /// Move it to this lifecycle stage (see `ds stage ls`).
        #[arg(long)]
        stage: Option<String>,
    },
    /// List deployers with their agents' status.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one deployer.
    Get {
        /// Deployer name or ID.
        deployer: String,
    },
    /// Change a deployer's remapping: env values and Secret names replaced in the
    /// deployments created on or promoted to it from now on (existing ones keep theirs).
    Remap(RemapArgs),
    /// Delete a deployer; its tokens stop working. Refused while it has deployments,
    /// unless `--cascade` or `--orphan` says what becomes of them.
    #[command(visible_alias = "delete")]
    Rm {
        /// Deployer name or ID.
        deployer: String,
        /// Delete its deployments, wait until its agent has removed their objects from the
        /// cluster, then delete the deployer.
        #[arg(long, conflicts_with = "orphan")]
        cascade: bool,
        /// Delete it and its deployments now, leaving their objects in the cluster; prints
        /// the `kubectl delete` that removes them by hand.
        #[arg(long)]
        orphan: bool,
        /// How long `--cascade` waits for the agent (e.g. `5m`, `90s`).
        #[arg(long, default_value = "5m", value_parser = ds_core::duration::parse, requires = "cascade")]
        timeout: Duration,
    },
    /// Issue a new token; the old one keeps working for the overlap window.
    RotateToken {
        /// Deployer name or ID.
        deployer: String,
        /// How long the previous token stays valid (e.g. `10m`, `1h`, `0s`).
        #[arg(long, default_value = "10m", value_parser = ds_core::duration::parse)]
        overlap: Duration,
    },
    /// Grant a group a role on a deployer (replacing its earlier one there).
    Grant {
        /// Deployer name or ID.
        deployer: String,
        /// The group.
        #[arg(long)]
        group: String,
        /// view: see it and its deployments; deploy: also change deployments; admin: also
        /// its token, install and grants.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Take a group's role on a deployer away.
    Revoke {
        /// Deployer name or ID.
        deployer: String,
        /// The group.
        #[arg(long)]
        group: String,
    },
    /// Print the one-line `kubectl apply` that installs the agent in a cluster.
    Install {
        /// Deployer name or ID.
        deployer: String,
        /// How long the install link works (default: the gateway's, 15m).
        #[arg(long, value_parser = ds_core::duration::parse)]
        ttl: Option<Duration>,
        /// Namespace the agent runs in (default: ds-deployer).
        #[arg(long = "agent-namespace")]
        agent_namespace: Option<String>,
        /// Cluster name the agent reports (default: the deployer's name).
        #[arg(long)]
        cluster_name: Option<String>,
        /// Let the agent create missing target namespaces (grants namespace create).
        #[arg(long)]
        create_namespaces: bool,
        /// Grant rights only in these namespaces (Roles instead of a ClusterRole), for
        /// clusters where cluster-wide rights are refused. Comma-separated or repeated.
        #[arg(long = "namespaces", value_delimiter = ',')]
        target_namespaces: Vec<String>,
    },
}

/// `ds deployment …`
#[derive(Debug, Args)]
pub struct DeploymentArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: DeploymentCommand,
}

/// The deployment subcommands.
#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Deploy a model server through a deployer.
    Create(Box<CreateArgs>),
    /// List deployments.
    #[command(visible_alias = "list")]
    ///
    /// Without -n or -A it lists every namespace (as -A does).
    Ls {
        /// Only this deployer's deployments (name or ID).
        #[arg(short, long)]
        deployer: Option<String>,
        /// Only deployments in this namespace (default: every namespace).
        #[arg(short, long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Deployments in every namespace (the default).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only deployments of deployers in this lifecycle stage.
        #[arg(long)]
        stage: Option<String>,
        /// After the table, print a line per change until Ctrl-C.
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one deployment: its spec and the status its agent reported.
    Get(GetArgs),
    /// Change a deployment; only the given flags change.
    Update(Box<UpdateArgs>),
    /// Delete a deployment; its agent removes the objects from the cluster.
    #[command(visible_alias = "delete")]
    Rm(SelectArgs),
    /// Print the logs of a deployment's pods, each line prefixed with its pod.
    Logs(LogsArgs),
    /// Show a deployment with its pods and the Kubernetes events of its objects.
    Describe(SelectArgs),
    /// List a deployment's revisions: one per change of its spec, with who made it.
    History(SelectArgs),
    /// Show what differs between two revisions of a deployment.
    Diff(DiffArgs),
    /// Restore the spec of an earlier revision (as a new revision).
    Rollback(RollbackArgs),
    /// Copy a deployment's current spec to another deployer (or every deployer of a
    /// stage, one after the other), with that deployer's remapping.
    Promote(PromoteArgs),
}

/// `ds deployer remap`: `--clear` first, then the removals, then the additions.
#[derive(Debug, Clone, Args)]
pub struct RemapArgs {
    /// Deployer name or ID.
    pub deployer: String,
    /// Replace value FROM of env variable NAME by TO: `NAME=FROM:TO` (FROM ends at the
    /// first ':'). Repeatable.
    #[arg(long = "env", value_name = "NAME=FROM:TO")]
    pub env: Vec<String>,
    /// Replace Secret FROM by Secret TO wherever a spec names a Secret (image pull
    /// secrets, TLS secret): `FROM:TO`. Repeatable.
    #[arg(long = "secret", value_name = "FROM:TO")]
    pub secret: Vec<String>,
    /// Remove the env entries of variable NAME. Repeatable.
    #[arg(long = "remove-env", value_name = "NAME")]
    pub remove_env: Vec<String>,
    /// Remove the entry of Secret FROM. Repeatable.
    #[arg(long = "remove-secret", value_name = "FROM")]
    pub remove_secret: Vec<String>,
    /// Remove every entry (before the additions given with it).
    #[arg(long)]
    pub clear: bool,
}

/// `ds deployment promote`
#[derive(Debug, Clone, Args)]
pub struct PromoteArgs {
    /// The deployment to promote (ID or name; `-d` names its deployer).
    #[command(flatten)]
    pub select: SelectArgs,
    /// The target deployer (name or ID).
    #[arg(
        long,
        value_name = "DEPLOYER",
        required_unless_present = "to_stage",
        conflicts_with = "to_stage"
    )]
    pub to: Option<String>,
    /// Every deployer of this stage you can see, by name, one after the other; a
    /// target that is refused or fails stops the rest.
    #[arg(long = "to-stage", value_name = "STAGE")]
    pub to_stage: Option<String>,
    /// Wait for each target to be Available before the next.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ds deployment diff`
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// The revision to compare from.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub from: u64,
    /// The revision to compare to (default: the current one).
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    pub to: Option<u64>,
}

/// `ds deployment rollback`
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// The revision to restore (default: the one before the current).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub to: Option<u64>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ds deployment logs`
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Keep printing new lines, and those of pods started later (a rollout), until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// The container: model (the model server) or proxy (the model-proxy: its query-log
    /// lines when the deployment has `--query-log`).
    #[arg(short, long, default_value = "model")]
    pub container: String,
    /// Only the last N lines of each pod.
    #[arg(long, value_name = "N")]
    pub tail: Option<i64>,
    /// Only lines newer than this (e.g. 10m, 1h).
    #[arg(long, value_parser = ds_core::duration::parse)]
    pub since: Option<Duration>,
    /// Only this pod of the deployment.
    #[arg(long)]
    pub pod: Option<String>,
}

/// Selects one deployment by ID, or by name (narrowed by deployer and namespace).
#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// Deployment ID or name.
    pub deployment: String,
    /// When selecting by name: the deployer (name or ID).
    #[arg(short, long)]
    pub deployer: Option<String>,
    /// When selecting by name: the namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// `ds deployment get`
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Print its table row, then a row per change until Ctrl-C (or until it is deleted).
    #[arg(short, long)]
    pub watch: bool,
}

/// `--wait` and `--timeout`.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Follow the rollout until the deployment is Available (exit 0) or Failed.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits (e.g. `5m`, `90s`).
    #[arg(long, default_value = "5m", value_parser = ds_core::duration::parse, requires = "wait")]
    pub timeout: Duration,
}

/// `ds deployment create`
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Name of the model served; also the default object name.
    #[arg(long)]
    pub model_name: String,
    /// The deployer (cluster) to deploy through, by name or ID.
    #[arg(short, long)]
    pub deployer: String,
    /// Container image, e.g. `tensorflow/serving:2.15.0`.
    #[arg(short, long)]
    pub image: String,
    /// Number of pods (0–1000).
    #[arg(short, long, default_value_t = 1)]
    pub replicas: u32,
    /// Host name for the Ingress; without it no Ingress is made.
    #[arg(long)]
    pub host: Option<String>,
    /// Object name in the cluster (default: the model name).
    #[arg(long)]
    pub name: Option<String>,
    /// Target namespace.
    #[arg(short, long, default_value = ds_core::spec::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Port the model container listens on.
    #[arg(long, default_value_t = ds_core::spec::DEFAULT_PORT)]
    pub port: u32,
    /// Environment variable `NAME=VALUE` (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = parse::parse_env)]
    pub env: Vec<(String, String)>,
    /// CPU request and limit, e.g. `500m` (see --cpu-limit for a different limit).
    #[arg(long)]
    pub cpu: Option<String>,
    /// CPU limit when it differs from --cpu, e.g. `2`.
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// Memory request and limit, e.g. `512Mi` (see --memory-limit).
    #[arg(long)]
    pub memory: Option<String>,
    /// Memory limit when it differs from --memory, e.g. `1Gi`.
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// Run without the model-proxy sidecar.
    #[arg(long)]
    pub no_proxy: bool,
    /// Class names for the proxy's prediction metrics, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub class_names: Vec<String>,
    /// Have the model-proxy write query logs: one JSON line per request on its stdout,
    /// for the cluster's log pipeline (needs the proxy).
    #[arg(long)]
    pub query_log: bool,
    /// The model server's protocol for the proxy: `auto` (default: v2 answers known by
    /// their `/v2/models/NAME/infer` path, others v1), `v1`, or `v2` (the proxy's
    /// readiness then asks `/v2/health/ready`).
    #[arg(long, value_name = "auto|v1|v2")]
    pub proxy_protocol: Option<String>,
    /// Ingress class (default: the cluster's).
    #[arg(long)]
    pub ingress_class: Option<String>,
    /// Extra label `KEY=VALUE` on every object (repeatable).
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = parse::parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub pod: pod_flags::PodCreateArgs,
    #[command(flatten)]
    pub storage: storage_flags::StorageCreateArgs,
    #[command(flatten)]
    pub scale: scale_flags::ScaleCreateArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ds deployment update`
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// New container image.
    #[arg(short, long)]
    pub image: Option<String>,
    /// New number of pods.
    #[arg(short, long)]
    pub replicas: Option<u32>,
    /// New container port.
    #[arg(long)]
    pub port: Option<u32>,
    /// Set environment variable `NAME=VALUE` (repeatable; replaces by name).
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = parse::parse_env)]
    pub env: Vec<(String, String)>,
    /// Remove environment variable NAME (repeatable).
    #[arg(long = "unset-env", value_name = "NAME")]
    pub unset_env: Vec<String>,
    /// New model name (the object name stays).
    #[arg(long)]
    pub model_name: Option<String>,
    /// New CPU request and limit (see --cpu-limit for a different limit).
    #[arg(long)]
    pub cpu: Option<String>,
    /// New CPU limit only, e.g. `2`; `""` removes it.
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// New memory request and limit (see --memory-limit).
    #[arg(long)]
    pub memory: Option<String>,
    /// New memory limit only, e.g. `1Gi`; `""` removes it.
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// New class names for the proxy's prediction metrics, comma-separated; `""` clears them.
    #[arg(long, value_delimiter = ',')]
    pub class_names: Option<Vec<String>>,
    /// Set label `KEY=VALUE` on every object (repeatable; replaces by key).
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = parse::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Remove label KEY (repeatable).
    #[arg(long = "unset-label", value_name = "KEY")]
    pub unset_labels: Vec<String>,
    /// Turn the model-proxy sidecar on.
    #[arg(long, conflicts_with = "no_proxy")]
    pub proxy: bool,
    /// Turn the model-proxy sidecar off.
    #[arg(long)]
    pub no_proxy: bool,
    /// Turn the model-proxy's query logs on (JSON lines on its stdout; needs the proxy).
    #[arg(long, conflicts_with = "no_query_log")]
    pub query_log: bool,
    /// Turn the model-proxy's query logs off.
    #[arg(long)]
    pub no_query_log: bool,
    /// New protocol of the model server for the proxy: `auto`, `v1` or `v2`.
    #[arg(long, value_name = "auto|v1|v2")]
    pub proxy_protocol: Option<String>,
    /// New Ingress host; `""` removes the Ingress.
    #[arg(long)]
    pub host: Option<String>,
    /// New ingress class.
    #[arg(long)]
    pub ingress_class: Option<String>,
    #[command(flatten)]
    pub pod: pod_flags::PodUpdateArgs,
    #[command(flatten)]
    pub storage: storage_flags::StorageUpdateArgs,
    #[command(flatten)]
    pub scale: scale_flags::ScaleUpdateArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ds stage …`
#[derive(Debug, Args)]
pub struct StageArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: StageCommand,
}

/// Who may deploy on a stage's deployers (`--deploy-by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeployByArg {
    /// Anyone allowed to deploy on the deployer.
    Anyone,
    /// Service accounts only (e.g. production deployed by CI).
    ServiceAccounts,
}

/// The stage subcommands.
#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// List the lifecycle stages in order, with their policy and deployers.
    #[command(visible_alias = "list")]
    Ls,
    /// Add a stage (at the end unless --after or --position says where).
    Create {
        /// Stage name, e.g. `Staging`.
        name: String,
        /// Put it right after this stage.
        #[arg(long, conflicts_with = "position")]
        after: Option<String>,
        /// Put it at this place in the list (from 1), moving the later ones down.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        position: Option<u32>,
        /// Who may deploy on its deployers.
        #[arg(long, value_enum, default_value_t = DeployByArg::Anyone)]
        deploy_by: DeployByArg,
    },
    /// Remove a stage; refused while deployers are in it.
    #[command(visible_alias = "delete")]
    Rm {
        /// Stage name.
        name: String,
    },
    /// Rename a stage; its deployers stay in it.
    Rename {
        /// Stage name now.
        name: String,
        /// Its new name.
        new_name: String,
    },
    /// Change who may deploy on a stage's deployers.
    Update {
        /// Stage name.
        name: String,
        /// `service-accounts`: only service accounts (CI) may create, change or delete
        /// deployments there; `anyone`: everyone allowed to deploy.
        #[arg(long, value_enum)]
        deploy_by: DeployByArg,
    },
}

/// `ds hook …`
#[derive(Debug, Args)]
pub struct HookArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: HookCommand,
}

/// When a hook runs (`--phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookPhaseArg {
    /// Before a create, update or rollback is stored; a failure refuses the change.
    Pre,
    /// After the agent reports the change Available or Failed.
    Post,
}

/// The hook subcommands.
#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Add a pre- or post-deployment hook to a deployer (deployer Admin).
    Add {
        /// Deployer name or ID.
        #[arg(short, long)]
        deployer: String,
        /// `pre`: runs before a change is stored and refuses it when it fails; `post`:
        /// runs after the agent reports the change Available or Failed.
        #[arg(long, value_enum)]
        phase: HookPhaseArg,
        /// The file name of an executable in the gateway's --hooks-dir (no path); it gets
        /// the deployment as JSON on stdin and DS_HOOK_* variables.
        #[arg(long, conflicts_with = "url", required_unless_present = "url")]
        command: Option<String>,
        /// An http:// or https:// URL the deployment is POSTed to as JSON (2xx: success).
        #[arg(long)]
        url: Option<String>,
        /// How long one run may take (e.g. `30s`, `2m`); killed then.
        #[arg(long, default_value = "60s", value_parser = ds_core::duration::parse)]
        timeout: std::time::Duration,
    },
    /// List hooks, of one deployer or of every deployer you may see.
    #[command(visible_alias = "list")]
    Ls {
        /// Only this deployer's (name or ID).
        #[arg(short, long)]
        deployer: Option<String>,
    },
    /// Remove a hook (deployer Admin); its past runs stay recorded.
    #[command(visible_alias = "delete")]
    Rm {
        /// The hook's ID (`ds hook ls`).
        id: u64,
    },
}

/// `ds audit …`
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The audit subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List the audit log, oldest first: every change, and refused attempts.
    #[command(visible_alias = "list")]
    Ls {
        /// Only entries from this long ago (e.g. `1h`, `30m`) or this RFC 3339 time on.
        #[arg(long)]
        since: Option<String>,
        /// Only entries of this actor, e.g. `key 0123456789abcdef`.
        #[arg(long)]
        actor: Option<String>,
        /// Only entries of this deployer (name or ID; the ID of a deleted one).
        #[arg(short, long)]
        deployer: Option<String>,
    },
}

/// `ds version`
#[derive(Debug, Args)]
pub struct VersionArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Only the client's version; do not ask the gateway.
    #[arg(long)]
    pub client: bool,
}

/// `ds login`
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Gateway URL, e.g. `https://gateway.example.com:8800`.
    #[arg(long, env = "DS_GATEWAY")]
    pub gateway: String,
    /// API key (`ds apikey create`, or the admin's, printed by `ds gateway` on its first
    /// start); `-` reads it from stdin.
    #[arg(long, env = "DS_API_KEY", hide_env_values = true, value_parser = ds_transport::parse_secret)]
    pub api_key: SecretString,
    /// PEM CA bundle to trust for the gateway's TLS certificate, besides the system roots.
    #[arg(long, env = "DS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Save without checking the key against the gateway.
    #[arg(long)]
    pub no_verify: bool,
}

// === errors ===

/// Errors of the CLI; each displays as one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "no gateway address: pass --gateway, set DS_GATEWAY, or run `ds login --gateway URL --api-key KEY`"
    )]
    NoGateway,
    #[error(
        "no API key: pass --api-key, set DS_API_KEY, or run `ds login --gateway URL --api-key KEY`"
    )]
    NoApiKey,
    #[error("invalid gateway address {url:?}: {reason}")]
    BadGatewayUrl { url: String, reason: String },
    #[error("the API key contains characters that cannot be sent in a gRPC header")]
    BadApiKey,
    #[error("reading the CA certificate {path}: {cause}")]
    ReadCaCert { path: String, cause: std::io::Error },
    #[error("cannot reach the gateway at {url}{detail}: is `ds gateway` running?")]
    Unreachable { url: String, detail: String },
    #[error(
        "cannot verify the gateway at {url} ({detail}): pass its CA bundle with --ca-cert or DS_CA_CERT"
    )]
    UntrustedGateway { url: String, detail: String },
    /// With the gateway's reason ("invalid API key", "token expired"…), which never
    /// repeats the credential.
    #[error(
        "the gateway rejected the API key or token ({0}): check --api-key / DS_API_KEY or run `ds login`"
    )]
    Unauthenticated(String),
    #[error(
        "the API key has expired: ask a gateway admin for a new one (`ds apikey create --user NAME`), then `ds login` with it"
    )]
    ExpiredKey,
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The gateway refused the request and said why (not found, invalid, exists…).
    #[error("{0}")]
    Rejected(String),
    #[error("the gateway at {url} does not support {what} yet: {hint}")]
    Unimplemented {
        url: String,
        what: String,
        hint: String,
    },
    #[error("the gateway did not answer in time")]
    Timeout,
    #[error("gateway error ({code}): {message}")]
    Gateway { code: String, message: String },
    #[error("config file {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("invalid {flag} value {value:?}: {reason}")]
    BadFlag {
        flag: String,
        value: String,
        reason: String,
    },
    #[error(
        "nothing to change for deployment {0}: give at least one of --image, --replicas, \
         --port, --env, --unset-env, --model-name, --cpu, --cpu-limit, --memory, --memory-limit, \
         --class-names, --label, --unset-label, --proxy/--no-proxy, --query-log/--no-query-log, \
         --host, --ingress-class"
    )]
    NothingToUpdate(String),
    #[error("nothing to change for deployer {0}: give --stage")]
    NothingToUpdateDeployer(String),
    #[error(
        "nothing to change in deployer {0}'s remapping: give --env, --secret, --remove-env, --remove-secret or --clear"
    )]
    NothingToRemap(String),
    #[error("no deployer of stage {stage} to promote {deployment} to{why}")]
    NoPromotionTarget {
        stage: String,
        deployment: String,
        why: String,
    },
    /// A target of a promotion was refused or failed: the ones after it were not tried.
    #[error(
        "promotion of {deployment} stopped at deployer {target}: {error} (done: {done}; not run: {not_run})"
    )]
    PromotionStopped {
        deployment: String,
        target: String,
        error: String,
        done: String,
        not_run: String,
    },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A validation error said with the flag that set the value.
    #[error("invalid {flag} {value}: {rule}")]
    InvalidFlag {
        flag: String,
        /// Quoted and cut as validation shows it.
        value: String,
        rule: String,
    },
    #[error("gateway version unknown: {0}")]
    GatewayVersion(Box<CliError>),
    #[error("deployment {name} failed: {error}")]
    RolloutFailed { name: String, error: String },
    #[error(
        "deployer {deployer} has no connected agent ({last_seen}): nothing will roll the deployment out until its agent runs (see `ds deployer get {deployer}`)"
    )]
    NoAgent { deployer: String, last_seen: String },
    #[error(
        "timed out after {timeout} waiting for deployment {name} to become available ({progress})"
    )]
    WaitTimeout {
        name: String,
        timeout: String,
        progress: String,
    },
    #[error("writing the output: {0}")]
    Output(String),
    #[error(
        "deployer {name} has {count} deployments: delete them first, or use --cascade (delete \
         them and wait for the agent to remove their objects) or --orphan (leave the objects \
         in the cluster)"
    )]
    DeployerHasDeployments { name: String, count: u32 },
    #[error(
        "timed out after {timeout} waiting for the agent of deployer {name} to remove its \
         objects ({progress}); its deployments are deleted, the deployer and its tokens are \
         kept: run `ds deployer rm {name} --cascade` again once its agent runs, or use \
         --orphan to delete it now and clean up by hand"
    )]
    CascadeTimeout {
        name: String,
        timeout: String,
        progress: String,
    },
}

// === entry points ===

/// `ds deployer …`
///
/// # Errors
/// Missing credentials, an unreachable gateway, or the gateway's refusal, as one line.
pub async fn deployer(args: DeployerArgs) -> Result<(), CliError> {
    deployer_cmd::run(args).await
}

/// `ds user …`
///
/// # Errors
/// Bad names, missing credentials, an unreachable gateway, or the gateway's refusal
/// (which permission is missing), as one line.
pub async fn user(args: UserArgs) -> Result<(), CliError> {
    teams_cmd::user(args).await
}

/// `ds apikey …`
///
/// # Errors
/// As [`user`]; also a bad `--expires`.
pub async fn apikey(args: ApikeyArgs) -> Result<(), CliError> {
    teams_cmd::apikey(args).await
}

/// `ds group …`
///
/// # Errors
/// As [`user`].
pub async fn group(args: GroupArgs) -> Result<(), CliError> {
    teams_cmd::group(args).await
}

/// `ds deployment …`
///
/// # Errors
/// Bad flags, missing credentials, an unreachable gateway, the gateway's refusal, or a
/// failed or timed-out `--wait`, as one line.
pub async fn deployment(args: DeploymentArgs) -> Result<(), CliError> {
    deployment_cmd::run(args).await
}

/// `ds stage …`
///
/// # Errors
/// Bad flags, missing credentials, an unreachable gateway, or the gateway's refusal.
pub async fn stage(args: StageArgs) -> Result<(), CliError> {
    stage_cmd::run(args).await
}

/// `ds hook …`
///
/// # Errors
/// Bad flags, missing credentials, an unreachable gateway, or the gateway's refusal.
pub async fn hook(args: HookArgs) -> Result<(), CliError> {
    hook_cmd::run(args).await
}

/// `ds audit …`
///
/// # Errors
/// Bad flags, missing credentials, an unreachable gateway, or the gateway's refusal.
pub async fn audit(args: AuditArgs) -> Result<(), CliError> {
    audit_cmd::run(args).await
}

/// `ds login`: checks the key against the gateway (unless `--no-verify`) and saves the
/// address and key in the config file, readable by the owner only.
///
/// # Errors
/// The gateway refused the key or the config file cannot be written.
pub async fn login(args: LoginArgs) -> Result<(), CliError> {
    config::login(args).await
}

/// `ds version`: the client's version, then the gateway's.
///
/// # Errors
/// The gateway's version cannot be known (unreachable, no credentials), after the
/// client's version is printed: as kubectl, a missing server version fails the command.
pub async fn version(args: VersionArgs) -> Result<(), CliError> {
    version::run(args).await
}
