//! The gateway's storage: one trait, the records it holds, and the change hub that
//! fans committed changes out to watchers in revision order.

use chrono::{DateTime, Utc};
use ds_core::DeploymentSpec;
use ds_core::remap::{Remap, RemapEdit, Remapped};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// How many changes a slow watcher may fall behind before it is told to reconnect.
const CHANGE_CHANNEL_CAPACITY: usize = 1024;
/// How many status notifications a slow status watcher may fall behind.
const STATUS_CHANNEL_CAPACITY: usize = 4096;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An object with this identity exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The object changed between read and write; the caller may retry.
    #[error("{0} was changed concurrently")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The change breaks a rule of the domain (e.g. a remapping entry); nothing changed.
    #[error("{0}")]
    Invalid(#[from] ds_core::ValidationError),
    /// Applying the built-in schema migrations failed.
    #[error("migrating the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row cannot be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The change would break a rule that keeps the gateway usable (e.g. removing the
    /// last gateway admin); nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The object is still used by others (a stage with deployers): nothing changed.
    #[error("{0}")]
    InUse(String),
    /// The database URL names a back end this build does not serve.
    #[error(
        "unsupported database URL scheme {0:?} (supported: sqlite:, postgres://, postgresql://)"
    )]
    Unsupported(String),
}

/// A deployer as stored, with the counts and agent heartbeat the CLI shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployerRecord {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The latest revision (0 before any change).
    pub revision: u64,
    pub agent_version: String,
    pub cluster: String,
    pub instance: String,
    /// The namespaces the agent is limited to; empty: cluster-wide or never reported.
    pub agent_namespaces: Vec<String>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Number of deployments it holds.
    pub deployments: u32,
    /// The agent's latest count of the deployer's objects in its cluster; `None` until
    /// an agent reported one.
    pub objects: Option<ObjectCount>,
    /// The lifecycle stage it is in.
    pub stage: String,
    /// Env values and Secret names replaced in deployments created on or promoted to it.
    pub remap: Remap,
}

/// How many of a deployer's objects its agent sees in its cluster, counted while it held
/// the desired state of deployer revision `revision` (the proto's ClusterObjects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectCount {
    pub revision: u64,
    pub owned: u32,
}

impl DeployerRecord {
    /// A deployer just registered: no revision, no deployments, never seen by an agent.
    pub fn registered(id: String, name: &str, stage: &str, created_at: DateTime<Utc>) -> Self {
        Self {
            id,
            name: name.to_string(),
            created_at,
            revision: 0,
            agent_version: String::new(),
            cluster: String::new(),
            instance: String::new(),
            agent_namespaces: Vec::new(),
            last_seen: None,
            deployments: 0,
            objects: None,
            stage: stage.to_string(),
            remap: Remap::default(),
        }
    }
}

/// A deployment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: String,
    pub deployer_id: String,
    pub name: String,
    pub namespace: String,
    pub spec: DeploymentSpec,
    /// The deployer revision of its last change.
    pub revision: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One revision of a deployment's spec: immutable, numbered per deployment from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    pub deployment_id: String,
    /// 1 for the create, then one more for every change of the spec.
    pub number: u64,
    /// The deployer revision the change was made at (the deployment's
    /// `revision_of_last_change` then).
    pub deployer_revision: u64,
    pub spec: DeploymentSpec,
    /// Who made it ("alice (key <API key ID>)", "key <ID>" before users existed); empty
    /// when not known.
    pub actor: String,
    /// What else is to know about it, e.g. "rollback to revision 2".
    pub note: String,
    pub created_at: DateTime<Utc>,
    /// The status reached at this revision (the proto `Phase` number of Available or
    /// Failed); `None` until the agent reports one of them.
    pub phase: Option<i32>,
    /// What the deployer's remapping replaced for it (a create or a promotion).
    pub remapped: Vec<Remapped>,
}

/// Who makes a change, in which request, and why: the context every mutating store
/// method takes, recorded with the revision a change makes and in its audit row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeBy {
    /// "key <API key ID>"; empty when not known.
    pub actor: String,
    /// The request's ID (`x-request-id`), to find its audit rows and log lines.
    pub request_id: String,
    /// What else is to know about it, e.g. "rollback to revision 2".
    pub note: String,
    /// The audit action when the change is more than the store operation (a rollback is
    /// an update); `None`: the operation's own, e.g. `deployment.update`.
    pub action: Option<&'static str>,
    /// What the deployer's remapping replaced in the spec written, recorded with the
    /// revision the change makes.
    pub remapped: Vec<Remapped>,
}

impl ChangeBy {
    /// A change by `actor` in request `request_id`.
    pub fn new(actor: impl Into<String>, request_id: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            request_id: request_id.into(),
            ..Self::default()
        }
    }

    /// The same context with a note.
    #[must_use]
    pub fn with_note(&self, note: impl Into<String>) -> Self {
        Self {
            note: note.into(),
            ..self.clone()
        }
    }

    /// The audit action of an operation: the override, else the operation's own.
    pub fn action_or(&self, own: &'static str) -> &'static str {
        self.action.unwrap_or(own)
    }
}

/// Who may create, change or delete deployments on a stage's deployers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployBy {
    /// Anyone allowed to deploy on the deployer.
    #[default]
    Anyone,
    /// Service accounts only (e.g. production deployed by CI).
    ServiceAccounts,
}

impl DeployBy {
    /// The stored and shown form: `anyone` or `service-accounts`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployBy::Anyone => "anyone",
            DeployBy::ServiceAccounts => "service-accounts",
        }
    }

    /// The stored form back; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "anyone" => Some(DeployBy::Anyone),
            "service-accounts" => Some(DeployBy::ServiceAccounts),
            _ => None,
        }
    }
}

/// A lifecycle stage with the deployers in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRecord {
    pub name: String,
    /// Its place in the list (ascending).
    pub position: i64,
    pub deploy_by: DeployBy,
    /// The names of the deployers in it, sorted.
    pub deployers: Vec<String>,
}

/// Where a new stage goes in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagePlace {
    /// After every other stage.
    Last,
    /// Right after the named stage.
    After(String),
    /// At this 1-based place; the stages from there on move down one.
    At(u32),
}

/// What `UpdateDeployer` changes; `None` fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployerUpdate {
    /// The stage to move it to.
    pub stage: Option<String>,
    /// An edit of its remapping (`SetDeployerRemap`), applied to the stored map in the
    /// transaction; `Invalid` when the result breaks a rule.
    pub remap: Option<RemapEdit>,
}

/// Whether an audited attempt was carried out or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Denied,
}

impl Outcome {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
        }
    }
}

/// What an audit row says happened (the actor and request come from [`ChangeBy`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditEvent {
    /// E.g. "deployment.create", "stage.rename", "authenticate".
    pub action: String,
    /// "deployer", "deployment", "stage", "api-key", "install-code", "rpc".
    pub object_kind: String,
    /// The object as people name it: a name, `namespace/name`, a key ID.
    pub object: String,
    /// The deployer it is of, if any.
    pub deployer_id: Option<String>,
    /// The object before and after, without secrets; `None` for none.
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl AuditEvent {
    /// An event of `action` on the object `object` of kind `object_kind`.
    pub fn new(action: &str, object_kind: &str, object: impl Into<String>) -> Self {
        Self {
            action: action.to_string(),
            object_kind: object_kind.to_string(),
            object: object.into(),
            ..Self::default()
        }
    }

    /// Of this deployer.
    #[must_use]
    pub fn of_deployer(mut self, id: &str) -> Self {
        self.deployer_id = Some(id.to_string());
        self
    }

    /// With the object as it was before.
    #[must_use]
    pub fn before(mut self, value: serde_json::Value) -> Self {
        self.before = Some(value);
        self
    }

    /// With the object as it is after.
    #[must_use]
    pub fn after(mut self, value: serde_json::Value) -> Self {
        self.after = Some(value);
        self
    }
}

/// A row of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Increasing in the order rows were written (per database).
    pub id: u64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub object_kind: String,
    pub object: String,
    pub deployer_id: Option<String>,
    /// JSON text, as stored.
    pub before: Option<String>,
    pub after: Option<String>,
    pub request_id: String,
    pub outcome: Outcome,
    /// Why it was denied, or the change's note.
    pub reason: String,
}

/// Which audit rows [`Store::list_audit`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only rows written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only rows of this actor (exact).
    pub actor: Option<String>,
    /// Only rows of this deployer ID.
    pub deployer_id: Option<String>,
    /// Only rows after this ID (the page token); 0 for the start.
    pub after_id: u64,
    /// At most this many rows.
    pub limit: u32,
}

/// Revisions kept per deployment unless the gateway is told otherwise.
pub const DEFAULT_REVISION_HISTORY: u32 = 50;

/// A stored token or API key: only its hash.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The deployer it authenticates (empty for admin API keys).
    pub deployer_id: String,
    /// SHA-256 of the whole secret.
    pub hash: [u8; 32],
    /// When a rotated-out token stops working; `None` while current.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A user or a service account (a technical account, e.g. for CI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    User,
    ServiceAccount,
}

impl UserKind {
    /// The stored and shown word.
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::User => "user",
            UserKind::ServiceAccount => "service-account",
        }
    }

    /// The kind a stored word names.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "user" => Some(UserKind::User),
            "service-account" => Some(UserKind::ServiceAccount),
            _ => None,
        }
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub kind: UserKind,
    /// A gateway admin: every permission, and alone manages users, groups and deployers.
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    /// The groups it is a member of, by name.
    pub groups: Vec<String>,
}

/// An API key as listed: never its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The public ID (the part after `dsk_`), shown in lists and in who made a change.
    pub id: String,
    /// The user it authenticates.
    pub user: String,
    pub created_at: DateTime<Utc>,
    /// When it stops working; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key with what authenticating by it needs: its hash and its user.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub key: ApiKeyRecord,
    /// SHA-256 of the whole key.
    pub hash: [u8; 32],
    pub user: UserRecord,
}

/// A group as stored, with its members by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub members: Vec<String>,
}

/// What a group may do on one deployer; ordered: `View < Deploy < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// See the deployer, its deployments and their details.
    View,
    /// Also create, update, roll back and delete deployments.
    Deploy,
    /// Also the deployer's settings: its token, install codes and grants.
    Admin,
}

impl Role {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        }
    }

    /// The role a stored word names.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "view" => Some(Role::View),
            "deploy" => Some(Role::Deploy),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::View => "View",
            Role::Deploy => "Deploy",
            Role::Admin => "Admin",
        })
    }
}

/// A role on a deployer granted to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub deployer_id: String,
    pub group: String,
    pub role: Role,
}

/// When a hook runs: before a change is stored, or after the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPhase {
    /// Before a create, update or rollback is stored; a failure refuses the change.
    Pre,
    /// After the agent reports the change's revision Available or Failed.
    Post,
}

impl HookPhase {
    /// The stored and shown word.
    pub fn as_str(self) -> &'static str {
        match self {
            HookPhase::Pre => "pre",
            HookPhase::Post => "post",
        }
    }

    /// The phase a stored word names.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "pre" => Some(HookPhase::Pre),
            "post" => Some(HookPhase::Post),
            _ => None,
        }
    }
}

/// What a hook runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookTarget {
    /// An executable's file name inside the gateway's `--hooks-dir`.
    Command(String),
    /// An `http://` or `https://` URL the deployment is POSTed to.
    Url(String),
}

impl HookTarget {
    /// The command name or the URL.
    pub fn as_str(&self) -> &str {
        match self {
            HookTarget::Command(s) | HookTarget::Url(s) => s,
        }
    }
}

/// A hook to add to a deployer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHook {
    pub phase: HookPhase,
    pub target: HookTarget,
    /// How long one run may take, in milliseconds.
    pub timeout_ms: u64,
}

/// A deployer's hook as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRecord {
    pub id: u64,
    pub deployer_id: String,
    pub phase: HookPhase,
    pub target: HookTarget,
    pub timeout_ms: u64,
    pub created_at: DateTime<Utc>,
    /// Who added it.
    pub created_by: String,
}

/// How a hook run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookOutcome {
    /// Exit code 0, or an HTTP 2xx answer.
    Ok,
    /// Another exit code, a non-2xx answer, or it could not be started or reached.
    Failed,
    /// Killed (or abandoned) at its timeout.
    TimedOut,
    /// No hook slot of the gateway came free within the phase's wait.
    NoSlot,
}

impl HookOutcome {
    /// The stored and shown word.
    pub fn as_str(self) -> &'static str {
        match self {
            HookOutcome::Ok => "ok",
            HookOutcome::Failed => "failed",
            HookOutcome::TimedOut => "timed_out",
            HookOutcome::NoSlot => "no_slot",
        }
    }

    /// The outcome a stored word names.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "ok" => Some(HookOutcome::Ok),
            "failed" => Some(HookOutcome::Failed),
            "timed_out" => Some(HookOutcome::TimedOut),
            "no_slot" => Some(HookOutcome::NoSlot),
            _ => None,
        }
    }
}

/// One run of a hook, to record or as recorded (`id` 0 before it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRunRecord {
    pub id: u64,
    pub hook_id: u64,
    pub deployer_id: String,
    /// Empty for a create the hook refused.
    pub deployment_id: String,
    /// `namespace/name`.
    pub deployment: String,
    /// The deployment revision (1, 2, 3…) the change makes or made.
    pub revision: u64,
    pub phase: HookPhase,
    /// The command name or URL that ran.
    pub target: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: HookOutcome,
    /// The exit code or HTTP status, if there is one.
    pub exit_code: Option<i32>,
    /// The end of its output (capped), or why it did not run.
    pub output_tail: String,
    /// Who made the change it ran for.
    pub actor: String,
}

/// What an agent observed for one deployment (mirrors the proto's DeploymentStatus).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusRecord {
    pub deployment_id: String,
    /// The proto `Phase` number.
    pub phase: i32,
    pub ready_replicas: u32,
    pub available_replicas: u32,
    pub updated_replicas: u32,
    pub applied_revision: u64,
    pub endpoint: String,
    pub last_error: String,
    /// Why it is not available, from its pods; empty if nothing is wrong.
    pub reason: String,
    /// Its pods as the agent last reported them.
    pub pods: Vec<ds_core::proto::PodStatus>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The agent's heartbeat information.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentHeartbeat {
    pub version: String,
    pub cluster: String,
    pub instance: String,
    pub namespaces: Vec<String>,
    /// The agent's count of the deployer's objects, when this report carries one (the
    /// stored count stays otherwise).
    pub objects: Option<ObjectCount>,
}

/// A committed change of one deployer, published after the commit in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A deployment was created or changed.
    Upsert(Arc<DeploymentRecord>),
    /// A deployment was deleted.
    Removal {
        revision: u64,
        id: String,
        namespace: String,
        name: String,
    },
    /// The deployer itself was deleted: its watchers must end.
    DeployerDeleted,
}

impl Change {
    /// The revision of this change (`u64::MAX` for a deleted deployer: nothing follows).
    pub fn revision(&self) -> u64 {
        match self {
            Change::Upsert(d) => d.revision,
            Change::Removal { revision, .. } => *revision,
            Change::DeployerDeleted => u64::MAX,
        }
    }
}

/// One item of a snapshot streamed by [`Store::stream_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotItem {
    /// The deployer's revision; always the first item.
    Revision(u64),
    /// A deployment, in namespace and name order.
    Deployment(Box<DeploymentRecord>),
}

/// Where a page of [`Store::list_deployments_page`] starts: after this deployment key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentKey {
    pub deployer_id: String,
    pub namespace: String,
    pub name: String,
}

/// Which deployment a name lookup may match.
#[derive(Debug, Clone, Default)]
pub struct DeploymentSelector {
    /// Deployment ID or name.
    pub deployment: String,
    /// Deployer ID (already resolved), to disambiguate a name.
    pub deployer_id: Option<String>,
    /// Namespace, to disambiguate a name.
    pub namespace: Option<String>,
}

/// The gateway's persistent state. Every mutation of a deployer's deployments bumps that
/// deployer's revision in the same transaction and publishes the change on the
/// [`ChangeHub`] in revision order.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The hub on which committed changes are published.
    fn hub(&self) -> &ChangeHub;

    /// Registers a deployer in the first stage with its first token hash, by nobody in
    /// particular.
    async fn create_deployer(
        &self,
        name: &str,
        token_id: &str,
        token_hash: [u8; 32],
    ) -> Result<DeployerRecord, StoreError> {
        self.create_deployer_by(&ChangeBy::default(), name, "", token_id, token_hash)
            .await
    }
    /// Registers a deployer in `stage` (empty: the first stage) together with its first
    /// token hash, made `by`. `NotFound` for an unknown stage.
    async fn create_deployer_by(
        &self,
        by: &ChangeBy,
        name: &str,
        stage: &str,
        token_id: &str,
        token_hash: [u8; 32],
    ) -> Result<DeployerRecord, StoreError>;
    /// Changes a deployer's settings (its stage); `NotFound` for an unknown deployer or
    /// stage. Returns it as it is now.
    async fn update_deployer(
        &self,
        by: &ChangeBy,
        id: &str,
        update: &DeployerUpdate,
    ) -> Result<DeployerRecord, StoreError>;
    /// All deployers, sorted by name.
    async fn list_deployers(&self) -> Result<Vec<DeployerRecord>, StoreError>;
    /// One deployer by ID or name.
    async fn get_deployer(&self, id_or_name: &str) -> Result<DeployerRecord, StoreError>;
    /// A deployer's `(id, name)` by ID or name, without the counts (cheap).
    async fn resolve_deployer(&self, id_or_name: &str) -> Result<(String, String), StoreError>;
    /// Deletes a deployer, its deployments and its tokens.
    async fn delete_deployer(&self, by: &ChangeBy, id: &str) -> Result<(), StoreError>;
    /// Deletes a deployer like [`Store::delete_deployer`], but only while it is still at
    /// `revision` (nothing created or changed since it was read); `Conflict` otherwise.
    async fn delete_deployer_at(
        &self,
        by: &ChangeBy,
        id: &str,
        revision: u64,
    ) -> Result<(), StoreError>;
    /// Adds a new current token; the deployer's other current tokens expire at `old_expire`.
    async fn rotate_token(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        token_id: &str,
        token_hash: [u8; 32],
        old_expire: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// A deployer token by its public ID.
    async fn find_token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// Whether any API key exists.
    async fn has_api_key(&self) -> Result<bool, StoreError>;
    /// Stores an API key hash of the built-in `admin` user (the bootstrap key).
    async fn add_api_key(
        &self,
        by: &ChangeBy,
        key_id: &str,
        hash: [u8; 32],
    ) -> Result<(), StoreError>;
    /// An admin API key by its public ID.
    async fn find_api_key(&self, key_id: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// Creates a user (`AlreadyExists` for a taken name).
    async fn create_user(
        &self,
        by: &ChangeBy,
        name: &str,
        kind: UserKind,
        admin: bool,
    ) -> Result<UserRecord, StoreError>;
    /// All users with their groups, by name.
    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// One user with its groups.
    async fn get_user(&self, name: &str) -> Result<UserRecord, StoreError>;
    /// Deletes a user, its keys and memberships; `Refused` for the last gateway admin.
    async fn delete_user(&self, by: &ChangeBy, name: &str) -> Result<(), StoreError>;
    /// Stores an API key of `user` (`NotFound` for no such user).
    async fn create_api_key(
        &self,
        by: &ChangeBy,
        key_id: &str,
        hash: [u8; 32],
        user: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<ApiKeyRecord, StoreError>;
    /// API keys, of one user or all, by user and creation.
    async fn list_api_keys(&self, user: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// An API key with its hash and its user (with groups), by its public ID.
    async fn find_key_owner(&self, key_id: &str) -> Result<Option<KeyOwner>, StoreError>;
    /// Deletes an API key; returns it. `Refused` when it is the last unexpired key of the
    /// gateway admins (nobody could manage the gateway any more).
    async fn delete_api_key(&self, by: &ChangeBy, key_id: &str)
    -> Result<ApiKeyRecord, StoreError>;
    /// Creates a group (`AlreadyExists` for a taken name).
    async fn create_group(&self, by: &ChangeBy, name: &str) -> Result<GroupRecord, StoreError>;
    /// All groups with their members, by name.
    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError>;
    /// Deletes a group with its memberships and grants.
    async fn delete_group(&self, by: &ChangeBy, name: &str) -> Result<(), StoreError>;
    /// Makes `user` a member of `group` (`NotFound` for either missing, `AlreadyExists`
    /// when it is one); returns the group.
    async fn add_group_member(
        &self,
        by: &ChangeBy,
        group: &str,
        user: &str,
    ) -> Result<GroupRecord, StoreError>;
    /// Ends a membership (`NotFound` when there is none); returns the group.
    async fn remove_group_member(
        &self,
        by: &ChangeBy,
        group: &str,
        user: &str,
    ) -> Result<GroupRecord, StoreError>;
    /// Grants `role` on a deployer to a group, replacing the group's earlier role there
    /// (`NotFound` for no such deployer or group).
    async fn grant_deployer(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        group: &str,
        role: Role,
    ) -> Result<(), StoreError>;
    /// Takes a group's role on a deployer away (`NotFound` when it has none).
    async fn revoke_deployer(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        group: &str,
    ) -> Result<(), StoreError>;
    /// Grants, of one deployer or all, by deployer and group.
    async fn list_grants(&self, deployer_id: Option<&str>) -> Result<Vec<GrantRecord>, StoreError>;

    /// Creates a deployment at the deployer's next revision, by nobody in particular.
    async fn create_deployment(
        &self,
        deployer_id: &str,
        name: &str,
        namespace: &str,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError> {
        self.create_deployment_by(&ChangeBy::default(), deployer_id, name, namespace, spec)
            .await
    }
    /// Creates a deployment at the deployer's next revision, and its revision 1 made `by`.
    async fn create_deployment_by(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        name: &str,
        namespace: &str,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError>;
    /// Replaces a deployment's spec if it is still at `expected_revision`, by nobody in
    /// particular.
    async fn update_deployment(
        &self,
        id: &str,
        expected_revision: u64,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError> {
        self.update_deployment_by(&ChangeBy::default(), id, expected_revision, spec)
            .await
    }
    /// Replaces a deployment's spec if it is still at `expected_revision`, and records
    /// the deployment's next revision, made `by`; the oldest revisions beyond the history
    /// limit are dropped.
    async fn update_deployment_by(
        &self,
        by: &ChangeBy,
        id: &str,
        expected_revision: u64,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentRecord, StoreError>;
    /// The kept revisions of a deployment, oldest first (`NotFound` for no deployment).
    async fn list_revisions(&self, deployment_id: &str) -> Result<Vec<RevisionRecord>, StoreError>;
    /// How many revisions each deployment keeps from now on (at least 1).
    fn set_revision_history(&self, keep: u32);
    /// Deletes a deployment; returns it and the revision of the removal.
    async fn delete_deployment(
        &self,
        by: &ChangeBy,
        id: &str,
    ) -> Result<(DeploymentRecord, u64), StoreError>;
    /// One deployment by ID.
    async fn get_deployment(&self, id: &str) -> Result<DeploymentRecord, StoreError>;
    /// Deployments whose ID or name matches the selector.
    async fn find_deployments(
        &self,
        selector: &DeploymentSelector,
    ) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Deployments, optionally of one deployer, by deployer, namespace and name.
    async fn list_deployments(
        &self,
        deployer_id: Option<&str>,
    ) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Up to `limit` deployments, optionally of one deployer, after `after` in deployer,
    /// namespace and name order: one page of [`Store::list_deployments`]. With a
    /// deployer, `after` is a key of that deployer's.
    async fn list_deployments_page(
        &self,
        deployer_id: Option<&str>,
        after: Option<&DeploymentKey>,
        limit: u32,
    ) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// A deployer's complete desired state and its revision, read consistently.
    async fn snapshot(&self, deployer_id: &str)
    -> Result<(u64, Vec<DeploymentRecord>), StoreError>;
    /// A deployer's complete desired state read consistently like [`Store::snapshot`], but
    /// sent on `out` as it is read (its revision first, then each deployment), so that a
    /// snapshot of any size takes memory for `out`'s capacity only. Ends early, without
    /// error, when `out` closes; an error ends the read (what was sent is no snapshot).
    async fn stream_snapshot(
        &self,
        deployer_id: &str,
        out: mpsc::Sender<SnapshotItem>,
    ) -> Result<(), StoreError>;

    /// Records an agent heartbeat (and its object count, if it has one); returns the
    /// deployer's latest revision.
    async fn record_heartbeat(
        &self,
        deployer_id: &str,
        agent: &AgentHeartbeat,
    ) -> Result<u64, StoreError>;
    /// Stores reported statuses of the deployer's own deployments (others are ignored);
    /// returns the IDs stored.
    async fn put_statuses(
        &self,
        deployer_id: &str,
        statuses: &[StatusRecord],
    ) -> Result<Vec<String>, StoreError>;
    /// The latest reported status of a deployment.
    async fn get_status(&self, deployment_id: &str) -> Result<Option<StatusRecord>, StoreError>;
    /// The latest statuses of many deployments, by ID.
    async fn list_statuses(&self) -> Result<HashMap<String, StatusRecord>, StoreError>;

    /// The stages in order, each with its deployers.
    async fn list_stages(&self) -> Result<Vec<StageRecord>, StoreError>;
    /// One stage by name (exact).
    async fn get_stage(&self, name: &str) -> Result<StageRecord, StoreError>;
    /// Adds a stage at `place`; `AlreadyExists` for a taken name, `NotFound` for an
    /// unknown stage to put it after.
    async fn create_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        place: &StagePlace,
        deploy_by: DeployBy,
    ) -> Result<StageRecord, StoreError>;
    /// Removes a stage; `InUse` (naming them) while deployers are in it, or for the last
    /// stage.
    async fn delete_stage(&self, by: &ChangeBy, name: &str) -> Result<(), StoreError>;
    /// Renames a stage; its deployers follow.
    async fn rename_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        new_name: &str,
    ) -> Result<StageRecord, StoreError>;
    /// Changes who may deploy on a stage.
    async fn update_stage(
        &self,
        by: &ChangeBy,
        name: &str,
        deploy_by: DeployBy,
    ) -> Result<StageRecord, StoreError>;

    /// Adds a hook to a deployer (`NotFound` for no such deployer), audited as
    /// `hook.add`.
    async fn create_hook(
        &self,
        by: &ChangeBy,
        deployer_id: &str,
        hook: &NewHook,
    ) -> Result<HookRecord, StoreError>;
    /// Hooks, of one deployer or all, by deployer, phase and ID.
    async fn list_hooks(&self, deployer_id: Option<&str>) -> Result<Vec<HookRecord>, StoreError>;
    /// One hook by ID.
    async fn get_hook(&self, id: u64) -> Result<HookRecord, StoreError>;
    /// Removes a hook, audited as `hook.remove`; returns it.
    async fn delete_hook(&self, by: &ChangeBy, id: u64) -> Result<HookRecord, StoreError>;
    /// Records a hook run and its `hook.run` audit row (made `by`) together; returns it
    /// with its ID.
    async fn record_hook_run(
        &self,
        by: &ChangeBy,
        run: &HookRunRecord,
    ) -> Result<HookRunRecord, StoreError>;
    /// The latest `limit` runs of hooks for a deployment, oldest first.
    async fn list_hook_runs(
        &self,
        deployment_id: &str,
        limit: u32,
    ) -> Result<Vec<HookRunRecord>, StoreError>;

    /// Records a refused attempt (outcome `denied`) with why; changes nothing else.
    async fn record_denied(
        &self,
        by: &ChangeBy,
        event: &AuditEvent,
        reason: &str,
    ) -> Result<(), StoreError>;
    /// Audit rows in the order they were written, oldest first. There is no way to
    /// change or remove one.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}

// === impl ChangeHub ===

/// Fans committed changes out to watchers: one broadcast channel per deployer with
/// watchers, plus one channel of deployment IDs whose status or spec changed.
#[derive(Debug)]
pub struct ChangeHub {
    deployers: Mutex<HashMap<String, broadcast::Sender<Change>>>,
    touched: broadcast::Sender<String>,
}

impl Default for ChangeHub {
    fn default() -> Self {
        Self {
            deployers: Mutex::new(HashMap::new()),
            touched: broadcast::channel(STATUS_CHANNEL_CAPACITY).0,
        }
    }
}

impl ChangeHub {
    /// Subscribes to a deployer's changes. Subscribe before reading a snapshot so that no
    /// change falls between the two; drop changes at or below the snapshot's revision.
    pub fn subscribe(&self, deployer_id: &str) -> broadcast::Receiver<Change> {
        let mut map = self.deployers.lock();
        map.entry(deployer_id.to_string())
            .or_insert_with(|| broadcast::channel(CHANGE_CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Publishes a committed change. Callers publish each deployer's changes in revision
    /// order (SQLite under its write lock, PostgreSQL under its fan-out lock).
    pub fn publish(&self, deployer_id: &str, change: Change) {
        if let Change::Upsert(d) = &change {
            let _ = self.touched.send(d.id.clone());
        }
        if let Change::Removal { id, .. } = &change {
            let _ = self.touched.send(id.clone());
        }
        let mut map = self.deployers.lock();
        let deleted = matches!(change, Change::DeployerDeleted);
        if let Some(tx) = map.get(deployer_id) {
            // No receivers left: forget the channel so the map does not grow forever.
            if tx.send(change).is_err() || deleted {
                map.remove(deployer_id);
            }
        }
    }

    /// Ends a deployer's watchers (their channel closes): they reconnect and start over
    /// from a fresh snapshot. For a back end that cannot deliver some changes in order,
    /// e.g. another replica's changes that were pruned before this one read them.
    pub fn resync(&self, deployer_id: &str) {
        let mut map = self.deployers.lock();
        map.remove(deployer_id);
    }

    /// Whether anyone would receive a change of this deployer: a watcher of it, or of any
    /// deployment status. Lets a back end skip reading changes nobody receives.
    pub fn has_watchers(&self, deployer_id: &str) -> bool {
        if self.touched.receiver_count() > 0 {
            return true;
        }
        let map = self.deployers.lock();
        map.get(deployer_id)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Subscribes to the IDs of deployments whose spec or status changed.
    pub fn subscribe_touched(&self) -> broadcast::Receiver<String> {
        self.touched.subscribe()
    }

    /// Announces that a deployment's status changed.
    pub fn touch(&self, deployment_id: &str) {
        let _ = self.touched.send(deployment_id.to_string());
    }
}
