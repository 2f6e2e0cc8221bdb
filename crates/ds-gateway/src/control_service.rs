//! The control service the CLI calls: deployers, deployments, token rotation and the
//! status watch behind `--wait`; authenticated by the admin API key.

use super::Shared;
use super::access::{Credential, Denied, Need, Principal, Rpc};
use super::audit::{self, audit_denied};
use super::convert::{
    deployer_to_proto, grant_to_proto, group_to_proto, key_to_proto, rfc3339, stage_to_proto,
    user_to_proto,
};
use super::credentials;
use super::history;
use super::hooks;
use super::paging;
use super::presence::{AgentPresence, mark};
use super::request_id;
use super::rpc::{bearer, store_status};
use super::stages::may_deploy;
use super::store::{
    self, AuditEvent, AuditQuery, ChangeBy, DeployBy, DeployerRecord, DeployerUpdate,
    DeploymentKey, DeploymentRecord, DeploymentSelector, RevisionRecord, Role, StagePlace,
    StageRecord, StoreError,
};
use chrono::Utc;
use ds_core::proto::control_service_server::ControlService;
use ds_core::proto::{
    AddHookRequest, Hook, ListHooksRequest, ListHooksResponse, RemoveHookRequest,
};
use ds_core::proto::{
    CreateApiKeyRequest, CreateApiKeyResponse, CreateGroupRequest, CreateUserRequest,
    DeleteApiKeyRequest, DeleteApiKeyResponse, DeleteGroupRequest, DeleteGroupResponse,
    DeleteUserRequest, DeleteUserResponse, DeployerGrants, DeployerRole, GrantDeployerRequest,
    Group, GroupMemberRequest, ListApiKeysRequest, ListApiKeysResponse, ListGroupsRequest,
    ListGroupsResponse, ListUsersRequest, ListUsersResponse, RevokeDeployerRequest, User, UserKind,
};
use ds_core::proto::{
    CreateDeployerRequest, CreateDeployerResponse, CreateDeploymentRequest,
    CreateInstallCodeRequest, CreateInstallCodeResponse, CreateStageRequest, DeleteDeployerRequest,
    DeleteDeployerResponse, DeleteDeploymentRequest, DeleteDeploymentResponse, DeleteMode,
    DeleteStageRequest, DeleteStageResponse, Deployer, DeploymentDescription, DeploymentHistory,
    DeploymentLogsRequest, DeploymentRevision, DeploymentView, DescribeQuery, GetDeployerRequest,
    GetDeploymentRequest, GetDeploymentRevisionRequest, GetVersionRequest, GetVersionResponse,
    ListAuditRequest, ListAuditResponse, ListDeployersRequest, ListDeployersResponse,
    ListDeploymentsRequest, ListDeploymentsResponse, ListStagesRequest, ListStagesResponse,
    LogLines, LogsQuery, RenameStageRequest, RollbackDeploymentRequest, RotateDeployerTokenRequest,
    RotateDeployerTokenResponse, Stage, UpdateDeployerRequest, UpdateDeploymentRequest,
    UpdateStageRequest, inspect_reply, inspect_request,
};
use ds_core::proto::{
    PromoteDeploymentRequest, PromoteDeploymentResponse, SetDeployerRemapRequest,
};
use ds_core::remap::RemapEdit;
use ds_core::{DeploymentSpec, NewDeployment};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// How often an update retries after a concurrent change to the same deployment.
const UPDATE_ATTEMPTS: usize = 5;

/// The stream type of WatchDeploymentStatus.
pub type DeploymentViewStream = ReceiverStream<Result<DeploymentView, Status>>;

/// The stream type of DeploymentLogs.
pub type LogLinesStream = ReceiverStream<Result<LogLines, Status>>;

/// How long `describe` waits for the agent's answer before showing the view without it.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a status watch looks again at the agent's presence (`--wait` fails soon
/// after the agent goes away).
const PRESENCE_RECHECK: Duration = Duration::from_secs(2);

/// How long a verified API key is trusted without asking the database again.
const API_KEY_CACHE_TTL: Duration = Duration::from_secs(10);

/// How many verified keys the cache holds before it starts over.
const API_KEY_CACHE_MAX: usize = 1024;

/// A verified key's principal, when it was verified, and the cache generation then.
type VerifiedKey = (Arc<Principal>, Instant, u64);

/// Verified API keys, by the SHA-256 of the whole key: saves the database reads of a
/// principal (key, user, groups, grants) per CLI call, while a deleted key or a changed
/// grant takes effect at once on this gateway (an access change made here bumps the
/// generation) and within [`API_KEY_CACHE_TTL`] on other replicas.
#[derive(Default)]
struct KeyCache {
    // Looked up by the hash of the presented key, not the key: a lookup's timing can
    // tell at most something about a SHA-256 output, which does not help guess a key.
    entries: Mutex<HashMap<[u8; 32], VerifiedKey>>,
    generation: AtomicU64,
}

impl KeyCache {
    fn get(&self, hash: &[u8; 32]) -> Option<Arc<Principal>> {
        let generation = self.generation.load(Ordering::Acquire);
        let entries = self.entries.lock();
        let (principal, at, of) = entries.get(hash)?;
        (*of == generation && at.elapsed() < API_KEY_CACHE_TTL).then(|| principal.clone())
    }

    fn put(&self, hash: [u8; 32], principal: Arc<Principal>, generation: u64) {
        let mut entries = self.entries.lock();
        if entries.len() >= API_KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (principal, Instant::now(), generation));
    }

    /// Forgets every verified key: users, keys, groups or grants changed.
    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.lock().clear();
    }
}

/// An authenticated caller of one RPC, its gateway-wide need already checked.
struct Caller {
    principal: Arc<Principal>,
    rpc: Rpc,
    /// The request's ID, for the audit log.
    request_id: String,
}

impl Caller {
    /// Who makes a change, for its revision.
    fn by(&self, note: String) -> ChangeBy {
        ChangeBy::new(self.principal.actor(), self.request_id.clone()).with_note(note)
    }

    /// The role this RPC needs on its deployer (View for the lists, which show only
    /// what the caller may see).
    fn deployer_need(&self) -> Role {
        match self.rpc.need() {
            Need::Deployer(role) => role,
            _ => Role::View,
        }
    }
}

/// The ControlService implementation.
pub struct ControlSvc {
    shared: Arc<Shared>,
    verified_keys: Arc<KeyCache>,
}

impl ControlSvc {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            verified_keys: Arc::new(KeyCache::default()),
        }
    }

    /// Authenticates the caller and checks what `rpc` needs of it at the gateway level
    /// ([`Rpc::rule`]); a deployer's role is checked once the deployer is known
    /// ([`ControlSvc::guard`]). UNAUTHENTICATED for a missing, wrong or expired key
    /// (never repeating it), PERMISSION_DENIED naming what is missing; each refusal is
    /// recorded in the audit log.
    async fn authorize<T>(&self, req: &Request<T>, rpc: Rpc) -> Result<Caller, Status> {
        let request_id = request_id::of(req);
        let principal = match self.authenticate(req).await {
            Ok(principal) => principal,
            Err(status) => {
                self.shared.metrics.auth_failures.inc();
                if status.code() == tonic::Code::Unauthenticated {
                    // The key ID the credential named, if well-formed (never the credential;
                    // an unverified token's subject is not trusted either).
                    let named = bearer(req)
                        .ok()
                        .and_then(|p| credentials::parse_id(credentials::API_KEY_PREFIX, p))
                        .map(|id| format!("key {id}"));
                    let who = named.as_deref().unwrap_or(audit::UNKNOWN_ACTOR);
                    self.denied_authentication(req, who, &request_id, status.message())
                        .await;
                }
                return Err(status);
            }
        };
        let caller = Caller {
            principal,
            rpc,
            request_id,
        };
        let (need, action) = rpc.rule();
        if need == Need::GatewayAdmin && !caller.principal.admin {
            tracing::info!(user = %caller.principal.name, rpc = ?rpc, "refused: needs a gateway admin");
            let message = caller.principal.not_admin_message(action);
            self.denied(&caller, None, &message).await;
            return Err(Status::permission_denied(message));
        }
        Ok(caller)
    }

    /// Records a refused permission in the audit log.
    async fn denied(&self, caller: &Caller, deployer_id: Option<&str>, reason: &str) {
        let mut event = AuditEvent::new("authorize", audit::RPC, format!("{:?}", caller.rpc));
        if let Some(id) = deployer_id {
            event = event.of_deployer(id);
        }
        audit_denied(
            self.shared.store.as_ref(),
            &caller.by(String::new()),
            event,
            reason,
        )
        .await;
    }

    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Arc<Principal>, Status> {
        let presented = bearer(req)?;
        // Our own secrets keep their path (and its "invalid API key"), so a mistyped key
        // is not reported as a malformed JWT.
        let ours = [credentials::API_KEY_PREFIX, credentials::TOKEN_PREFIX]
            .iter()
            .any(|prefix| {
                presented
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('_'))
            });
        if let Some(verifier) = &self.shared.jwt
            && !ours
        {
            return match verifier.verify(presented, Utc::now()) {
                Ok(identity) => {
                    self.token_principal(&identity.subject, &identity.groups, None)
                        .await
                }
                Err(reason) => {
                    tracing::warn!(%reason, "rejected a JWT bearer token");
                    Err(Status::unauthenticated(reason.to_string()))
                }
            };
        }
        let hash = credentials::hash(presented);
        if let Some(principal) = self.verified_keys.get(&hash) {
            if principal.expired() {
                return Err(Status::unauthenticated("API key expired"));
            }
            return Ok(principal);
        }
        let Some(id) = credentials::parse_id(credentials::API_KEY_PREFIX, presented) else {
            tracing::warn!("rejected a credential that is not an API key");
            return Err(Status::unauthenticated("invalid API key"));
        };
        let generation = self.verified_keys.generation.load(Ordering::Acquire);
        let store = self.shared.store.as_ref();
        let owner = store.find_key_owner(id).await.map_err(store_status)?;
        let Some(owner) = owner.filter(|o| bool::from(o.hash.ct_eq(&hash))) else {
            tracing::warn!("rejected an API key");
            return Err(Status::unauthenticated("invalid API key"));
        };
        if owner.key.expires_at.is_some_and(|t| t <= Utc::now()) {
            tracing::warn!(key = %owner.key.id, user = %owner.user.name, "rejected an expired API key");
            return Err(Status::unauthenticated("API key expired"));
        }
        let grants = store.list_grants(None).await.map_err(store_status)?;
        let principal = Arc::new(Principal::from_key(&owner, &grants));
        self.verified_keys.put(hash, principal.clone(), generation);
        Ok(principal)
    }

    /// The principal of a verified bearer token (OIDC): its subject as the user, with the
    /// stored user's kind, admin flag and groups when one of that name exists, and the
    /// token's groups besides.
    async fn token_principal(
        &self,
        subject: &str,
        token_groups: &[String],
        expires_at: Option<chrono::DateTime<Utc>>,
    ) -> Result<Arc<Principal>, Status> {
        let store = self.shared.store.as_ref();
        let stored = match store.get_user(subject).await {
            Ok(user) => Some(user),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(store_status(e)),
        };
        let grants = store.list_grants(None).await.map_err(store_status)?;
        Ok(Arc::new(Principal::from_token(
            subject,
            token_groups,
            stored.as_ref(),
            expires_at,
            &grants,
        )))
    }

    /// Whether `principal`'s credential still works and it still has a role on the
    /// deployer, after users, keys, groups or grants changed (long-lived streams). A
    /// token's principal cannot be verified again here: it keeps what it had.
    async fn still_sees(&self, principal: &Principal, deployer_id: &str) -> Result<bool, Status> {
        let Credential::ApiKey(key_id) = &principal.credential else {
            return Ok(principal.can_view(deployer_id));
        };
        let store = self.shared.store.as_ref();
        let Some(owner) = store.find_key_owner(key_id).await.map_err(store_status)? else {
            return Ok(false);
        };
        if owner.key.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Ok(false);
        }
        let grants = store.list_grants(None).await.map_err(store_status)?;
        Ok(Principal::from_key(&owner, &grants).can_view(deployer_id))
    }

    /// Checks the caller's role on a deployer for its RPC. Without any role there the
    /// deployer does not exist for it: NOT_FOUND as for a missing deployer named `given`
    /// (its ID when empty). With too low a role: PERMISSION_DENIED naming the role needed.
    async fn guard(&self, caller: &Caller, deployer_id: &str, given: &str) -> Result<(), Status> {
        let need = caller.deployer_need();
        match caller.principal.check(deployer_id, need) {
            Ok(()) => Ok(()),
            Err(Denied::Invisible) => {
                let given = if given.is_empty() { deployer_id } else { given };
                Err(store_status(StoreError::NotFound(format!(
                    "deployer {given}"
                ))))
            }
            Err(Denied::Short { have, need }) => {
                let (_, name) = self.resolve(deployer_id).await?;
                let action = caller.rpc.rule().1;
                tracing::info!(user = %caller.principal.name, rpc = ?caller.rpc, deployer = %deployer_id, "refused: role too low");
                let message = caller.principal.short_message(action, &name, need, have);
                self.denied(caller, Some(deployer_id), &message).await;
                Err(Status::permission_denied(message))
            }
        }
    }

    /// For the RPCs on one's own keys: a gateway admin is needed for another user's.
    fn own_or_admin(&self, caller: &Caller, user: &str) -> Result<(), Status> {
        if user == caller.principal.name || caller.principal.admin {
            Ok(())
        } else {
            Err(Status::permission_denied(
                caller.principal.not_admin_message(caller.rpc.rule().1),
            ))
        }
    }

    /// A deployer's grants, by group.
    async fn grants(&self, deployer_id: &str) -> Result<DeployerGrants, Status> {
        let grants = self
            .shared
            .store
            .list_grants(Some(deployer_id))
            .await
            .map_err(store_status)?;
        Ok(DeployerGrants {
            deployer_id: deployer_id.to_string(),
            grants: grants.iter().map(grant_to_proto).collect(),
        })
    }

    /// A deployer's ID after the caller's role on it for its RPC is checked.
    async fn guarded_deployer(&self, caller: &Caller, given: &str) -> Result<String, Status> {
        let (id, _) = self.resolve(given).await?;
        self.guard(caller, &id, given).await?;
        Ok(id)
    }

    /// Records a refused authentication: `actor` is the key ID the credential named, if
    /// it was well-formed (never the credential itself).
    async fn denied_authentication<T>(
        &self,
        req: &Request<T>,
        actor: &str,
        request_id: &str,
        reason: &str,
    ) {
        let by = ChangeBy::new(actor, request_id);
        let event = AuditEvent::new("authenticate", audit::RPC, request_id::rpc_of(req));
        audit_denied(self.shared.store.as_ref(), &by, event, reason).await;
    }

    /// A stage by name, or INVALID_ARGUMENT naming `--stage` and the stages there are.
    async fn known_stage(&self, name: &str) -> Result<StageRecord, Status> {
        let store = &self.shared.store;
        match store.get_stage(name).await {
            Ok(stage) => Ok(stage),
            Err(StoreError::NotFound(_)) => {
                let names: Vec<String> = store
                    .list_stages()
                    .await
                    .map_err(store_status)?
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                Err(Status::invalid_argument(format!(
                    "stage: unknown stage {:?}; --stage takes one of: {} (see `ds stage ls`)",
                    ds_core::validate::cut(name),
                    names.join(", ")
                )))
            }
            Err(e) => Err(store_status(e)),
        }
    }

    /// Refuses, and records as denied, a change of deployments on a deployer in `stage`
    /// when the stage's policy does not allow the caller.
    async fn check_stage_policy(
        &self,
        caller: &Caller,
        by: &ChangeBy,
        stage: &str,
        event: AuditEvent,
    ) -> Result<(), Status> {
        let stage = self.known_stage(stage).await?;
        let caller_is_service_account = caller.principal.kind == store::UserKind::ServiceAccount;
        if let Err(refusal) = may_deploy(&stage, caller_is_service_account) {
            let reason = refusal.to_string();
            audit_denied(self.shared.store.as_ref(), by, event, &reason).await;
            return Err(Status::permission_denied(reason));
        }
        Ok(())
    }

    /// The stage policy for a change of deployment `d` (of the `action` the audit log
    /// would record).
    async fn check_deployment_policy(
        &self,
        caller: &Caller,
        by: &ChangeBy,
        d: &DeploymentRecord,
        action: &str,
    ) -> Result<(), Status> {
        let deployer = self.deployer(&d.deployer_id).await?;
        let event = AuditEvent::new(action, audit::DEPLOYMENT, audit::deployment_object(d))
            .of_deployer(&d.deployer_id);
        self.check_stage_policy(caller, by, &deployer.stage, event)
            .await
    }

    /// A deployment's kept revisions, oldest first.
    async fn revisions(&self, deployment_id: &str) -> Result<Vec<RevisionRecord>, Status> {
        self.shared
            .store
            .list_revisions(deployment_id)
            .await
            .map_err(store_status)
    }

    /// Creates a validated deployment on `deployer` as a new revision made `by`, with the
    /// deployer's remapping applied, after its namespace rights and stage policy: the one
    /// path of every new deployment (a create, a promotion to a deployer without it).
    async fn create_in(
        &self,
        caller: &Caller,
        by: &ChangeBy,
        deployer: DeployerRecord,
        name: String,
        namespace: String,
        spec: DeploymentSpec,
    ) -> Result<DeploymentView, Status> {
        let deployer_id = deployer.id.clone();
        let deployer_name = deployer.name.clone();
        // The deployer's remapping, first: everything after (validation, policy, the
        // store) sees the spec that will run there. Validated again: a remapped Secret
        // may now be named twice.
        let (spec, remapped) = ds_core::remap::apply(&spec, &deployer.remap);
        ds_core::validate_deployment(&name, &namespace, &spec).map_err(invalid)?;
        let by = &ChangeBy {
            remapped,
            ..by.clone()
        };
        if !deployer.agent_namespaces.is_empty() && !deployer.agent_namespaces.contains(&namespace)
        {
            // The agent could never write there: say so now rather than as a Failed status.
            return Err(invalid(ds_core::ValidationError {
                field: "namespace".into(),
                value: namespace,
                rule: format!(
                    "deployer {deployer_name}'s agent only has rights in: {} (installed with --namespaces); use one of them, or reinstall the agent with this namespace",
                    deployer.agent_namespaces.join(", ")
                ),
            }));
        }
        let event = AuditEvent::new(
            by.action_or("deployment.create"),
            audit::DEPLOYMENT,
            format!("{namespace}/{name}"),
        )
        .of_deployer(&deployer_id);
        self.check_stage_policy(caller, by, &deployer.stage, event)
            .await?;
        hooks::before_create(&self.shared, by, &deployer, &name, &namespace, &spec).await?;
        let record = self
            .shared
            .store
            .create_deployment_by(by, &deployer_id, &name, &namespace, &spec)
            .await
            .map_err(store_status)?;
        hooks::after_commit(&self.shared, by, &record);
        self.shared.metrics.deployment_changes.inc();
        tracing::info!(deployment = %record.id, deployer = %deployer_id, namespace = %record.namespace, name = %record.name, revision = record.revision, "deployment created");
        let presence = AgentPresence::of(&self.shared, &deployer_id, deployer.last_seen);
        let mut view = make_view(record, deployer_name, None);
        view.deployer_stage = deployer.stage;
        mark(&mut view, presence);
        Ok(view)
    }

    /// Changes a deployment's spec by `edit`, retrying on concurrent changes: validated,
    /// stored as a new revision made `by`, and sent to the agent. An edit that changes
    /// nothing makes no revision and answers `changed: false`.
    async fn change_spec(
        &self,
        by: &ChangeBy,
        mut record: DeploymentRecord,
        edit: impl Fn(&mut DeploymentSpec),
    ) -> Result<DeploymentView, Status> {
        // Pre-hooks run once per request, not again on a retry after a concurrent change.
        let mut hooked = false;
        for _ in 0..UPDATE_ATTEMPTS {
            let mut spec = record.spec.clone();
            edit(&mut spec);
            if spec == record.spec {
                // Nothing changes: no revision, no event for the agents.
                let view = self.view(record).await?;
                return Ok(DeploymentView {
                    changed: Some(false),
                    ..view
                });
            }
            ds_core::validate_deployment(&record.name, &record.namespace, &spec)
                .map_err(invalid)?;
            if !hooked {
                hooks::before_update(&self.shared, by, &record, &spec).await?;
                hooked = true;
            }
            match self
                .shared
                .store
                .update_deployment_by(by, &record.id, record.revision, &spec)
                .await
            {
                Ok(updated) => {
                    hooks::after_commit(&self.shared, by, &updated);
                    self.shared.metrics.deployment_changes.inc();
                    tracing::info!(deployment = %updated.id, revision = updated.revision, actor = %by.actor, "deployment updated");
                    let view = self.view(updated).await?;
                    return Ok(DeploymentView {
                        changed: Some(true),
                        ..view
                    });
                }
                Err(StoreError::Conflict(_)) => {
                    record = self
                        .shared
                        .store
                        .get_deployment(&record.id)
                        .await
                        .map_err(store_status)?;
                }
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(
            "deployment kept changing concurrently; retry",
        ))
    }

    /// A stage with its place in the list.
    async fn stage_view(&self, stage: StageRecord) -> Result<Stage, Status> {
        let stages = self
            .shared
            .store
            .list_stages()
            .await
            .map_err(store_status)?;
        let place = stages
            .iter()
            .position(|s| s.name == stage.name)
            .map_or(0, |i| i + 1);
        Ok(stage_to_proto(stage, place))
    }

    fn deployer_view(&self, d: DeployerRecord) -> Deployer {
        let (connected, stream_seen) = self.shared.presence.get(&d.id);
        let last_seen = match (d.last_seen, stream_seen, connected) {
            (_, _, true) => Some(Utc::now()),
            (a, b, false) => a.max(b),
        };
        let online = connected
            || last_seen.is_some_and(|t| {
                (Utc::now() - t).to_std().unwrap_or_default() < self.shared.offline_after
            });
        deployer_to_proto(DeployerRecord { last_seen, ..d }, online)
    }

    async fn deployer(&self, id_or_name: &str) -> Result<DeployerRecord, Status> {
        if id_or_name.is_empty() {
            return Err(Status::invalid_argument(
                "deployer: an ID or name is required",
            ));
        }
        self.shared
            .store
            .get_deployer(id_or_name)
            .await
            .map_err(store_status)
    }

    /// A deployer's `(id, name)`, without the counts a full record costs.
    async fn resolve(&self, id_or_name: &str) -> Result<(String, String), Status> {
        if id_or_name.is_empty() {
            return Err(Status::invalid_argument(
                "deployer: an ID or name is required",
            ));
        }
        self.shared
            .store
            .resolve_deployer(id_or_name)
            .await
            .map_err(store_status)
    }

    /// Resolves a selector to exactly one deployment the caller may see, and checks the
    /// caller's role on its deployer: deployments of deployers it has no role on do not
    /// exist for it.
    async fn select(
        &self,
        caller: &Caller,
        sel: &GetDeploymentRequest,
    ) -> Result<DeploymentRecord, Status> {
        let record = self.select_visible(caller, sel).await?;
        self.guard(caller, &record.deployer_id, "").await?;
        Ok(record)
    }

    async fn select_visible(
        &self,
        caller: &Caller,
        sel: &GetDeploymentRequest,
    ) -> Result<DeploymentRecord, Status> {
        if sel.deployment.is_empty() {
            return Err(Status::invalid_argument(
                "deployment: an ID or name is required",
            ));
        }
        let deployer_id = if sel.deployer.is_empty() {
            None
        } else {
            let (id, _) = self.resolve(&sel.deployer).await?;
            if !caller.principal.can_view(&id) {
                return Err(store_status(StoreError::NotFound(format!(
                    "deployer {}",
                    sel.deployer
                ))));
            }
            Some(id)
        };
        let selector = DeploymentSelector {
            deployment: sel.deployment.clone(),
            deployer_id,
            namespace: (!sel.namespace.is_empty()).then(|| sel.namespace.clone()),
        };
        let mut found = self
            .shared
            .store
            .find_deployments(&selector)
            .await
            .map_err(store_status)?;
        found.retain(|d| caller.principal.can_view(&d.deployer_id));
        match found.len() {
            0 => Err(Status::not_found(format!(
                "deployment {} not found",
                ds_core::validate::cut(&sel.deployment)
            ))),
            1 => Ok(found.remove(0)),
            n => Err(Status::failed_precondition(format!(
                "{n} deployments are named {}; give the deployer and namespace, or the ID",
                ds_core::validate::cut(&sel.deployment)
            ))),
        }
    }

    /// Asks the deployment's agent a question; FAILED_PRECONDITION, saying when the agent
    /// was last seen, when none is connected here.
    async fn ask(
        &self,
        d: &DeploymentRecord,
        query: inspect_request::Query,
    ) -> Result<super::inspect::Asked, Status> {
        match self.shared.inspectors.ask(&d.deployer_id, query).await {
            Ok(asked) => Ok(asked),
            Err(super::inspect::InspectError::NoAgent) => {
                let deployer = self.deployer(&d.deployer_id).await?;
                let view = self.deployer_view(deployer);
                let seen = if view.last_seen.is_empty() {
                    "never".to_string()
                } else {
                    view.last_seen
                };
                Err(Status::failed_precondition(format!(
                    "deployer {} has no agent connected to this gateway (last seen {seen}): logs and pods are read through its agent; start it, or check it with `ds deployer get {}`",
                    view.name, view.name
                )))
            }
        }
    }

    async fn view(&self, d: DeploymentRecord) -> Result<DeploymentView, Status> {
        let store = &self.shared.store;
        let (deployer_name, stage, last_seen) = store
            .get_deployer(&d.deployer_id)
            .await
            .map(|r| (r.name, r.stage, r.last_seen))
            .unwrap_or_default();
        let presence = AgentPresence::of(&self.shared, &d.deployer_id, last_seen);
        let status = store.get_status(&d.id).await.map_err(store_status)?;
        let mut view = make_view(d, deployer_name, status);
        view.deployer_stage = stage;
        mark(&mut view, presence);
        Ok(view)
    }
}

fn make_view(
    d: DeploymentRecord,
    deployer_name: String,
    status: Option<super::store::StatusRecord>,
) -> DeploymentView {
    // With a host, the Ingress URL (https:// with a TLS secret); else where the agent
    // says the Service is.
    let url = match d.spec.ingress_url() {
        Some(url) => url,
        None => status
            .as_ref()
            .map(|s| s.endpoint.clone())
            .unwrap_or_default(),
    };
    let status_updated_at = status
        .as_ref()
        .and_then(|s| s.updated_at)
        .map(rfc3339)
        .unwrap_or_default();
    let status = status
        .map(Into::into)
        .unwrap_or_else(|| ds_core::proto::DeploymentStatus {
            deployment_id: d.id.clone(),
            ..Default::default()
        });
    DeploymentView {
        deployment: Some(d.into()),
        deployer_name,
        status: Some(status),
        status_updated_at,
        url,
        ..Default::default()
    }
}

fn invalid(e: ds_core::ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Applies an update request's set fields to a spec.
fn apply_update(spec: &mut DeploymentSpec, req: &UpdateDeploymentRequest) {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if let Some(image) = &req.image {
        spec.image.clone_from(image);
    }
    if let Some(replicas) = req.replicas {
        spec.replicas = replicas;
    }
    if let Some(port) = req.port {
        spec.port = port;
    }
    if let Some(host) = &req.host {
        spec.host = non_empty(host);
    }
    if let Some(class) = &req.ingress_class {
        spec.ingress_class = non_empty(class);
    }
    for name in &req.unset_env {
        spec.env.retain(|e| &e.name != name);
    }
    for var in &req.set_env {
        match spec.env.iter_mut().find(|e| e.name == var.name) {
            Some(existing) => existing.value.clone_from(&var.value),
            None => spec.env.push(ds_core::EnvVar {
                name: var.name.clone(),
                value: var.value.clone(),
            }),
        }
    }
    // `--cpu`/`--memory` set the request and the limit alike, as `ds deployment create` does.
    if let Some(cpu) = req.cpu.as_deref().filter(|s| !s.is_empty()) {
        spec.resources.cpu_request = Some(cpu.to_string());
        spec.resources.cpu_limit = Some(cpu.to_string());
    }
    if let Some(memory) = req.memory.as_deref().filter(|s| !s.is_empty()) {
        spec.resources.memory_request = Some(memory.to_string());
        spec.resources.memory_limit = Some(memory.to_string());
    }
    if let Some(enabled) = req.proxy_enabled {
        spec.proxy.enabled = enabled;
    }
    if let Some(on) = req.proxy_query_log {
        spec.proxy.query_log = on;
    }
    if let Some(protocol) = &req.proxy_protocol {
        spec.proxy.protocol = ds_core::convert::proxy_protocol(protocol.clone());
    }
    // After `cpu`/`memory`: `--cpu 500m --cpu-limit 2` means request 500m, limit 2, as
    // on create.
    if let Some(limit) = &req.cpu_limit {
        spec.resources.cpu_limit = non_empty(limit);
    }
    if let Some(limit) = &req.memory_limit {
        spec.resources.memory_limit = non_empty(limit);
    }
    if let Some(classes) = &req.class_names {
        spec.proxy.class_names.clone_from(&classes.values);
    }
    for key in &req.unset_labels {
        spec.labels.remove(key);
    }
    for (key, value) in &req.set_labels {
        spec.labels.insert(key.clone(), value.clone());
    }
    if let Some(model) = &req.model_name {
        spec.model_name.clone_from(model);
    }
    super::pod_update::apply(spec, req);
    super::model_update::apply(spec, req);
    super::scale_update::apply(spec, req);
}

#[tonic::async_trait]
impl ControlService for ControlSvc {
    type WatchDeploymentStatusStream = DeploymentViewStream;
    type DeploymentLogsStream = LogLinesStream;

    async fn deployment_logs(
        &self,
        request: Request<DeploymentLogsRequest>,
    ) -> Result<Response<Self::DeploymentLogsStream>, Status> {
        let caller = self.authorize(&request, Rpc::DeploymentLogs).await?;
        let req = request.into_inner();
        let container = ds_core::validate::logs_container(&req.container).map_err(invalid)?;
        ds_core::validate::logs_window(req.tail_lines, req.since_seconds).map_err(invalid)?;
        let record = self
            .select(&caller, &req.selector.unwrap_or_default())
            .await?;
        let query = inspect_request::Query::Logs(LogsQuery {
            deployment_id: record.id.clone(),
            namespace: record.namespace.clone(),
            container: container.to_string(),
            follow: req.follow,
            tail_lines: req.tail_lines,
            since_seconds: req.since_seconds,
            pod: req.pod,
        });
        let mut asked = self.ask(&record, query).await?;
        let (tx, rx) = mpsc::channel(16);
        let shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let answer = tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = tx.try_send(Err(Status::unavailable("gateway shutting down")));
                        break;
                    }
                    () = tx.closed() => break,
                    a = asked.answers.recv() => a,
                };
                let out = match answer {
                    Some(inspect_reply::Answer::Lines(lines)) => Ok(lines),
                    Some(inspect_reply::Answer::End(_)) => break,
                    Some(inspect_reply::Answer::Error(e)) => Err(Status::failed_precondition(
                        format!("the agent could not read the logs: {e}"),
                    )),
                    Some(inspect_reply::Answer::Description(_)) => continue,
                    None => Err(Status::unavailable(
                        "the agent disconnected before the logs ended; try again",
                    )),
                };
                let end = out.is_err();
                if tx.send(out).await.is_err() || end {
                    break;
                }
            }
            // Dropping the question cancels it at the agent (a followed log).
            drop(asked);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn describe_deployment(
        &self,
        request: Request<GetDeploymentRequest>,
    ) -> Result<Response<DeploymentDescription>, Status> {
        let caller = self.authorize(&request, Rpc::DescribeDeployment).await?;
        let record = self.select(&caller, request.get_ref()).await?;
        let query = inspect_request::Query::Describe(DescribeQuery {
            deployment_id: record.id.clone(),
            namespace: record.namespace.clone(),
            name: record.name.clone(),
        });
        let (cluster, cluster_error) = match self.ask(&record, query).await {
            Err(status) => (None, status.message().to_string()),
            Ok(mut asked) => {
                match tokio::time::timeout(DESCRIBE_TIMEOUT, asked.answers.recv()).await {
                    Ok(Some(inspect_reply::Answer::Description(d))) => (Some(d), String::new()),
                    Ok(Some(inspect_reply::Answer::Error(e))) => {
                        (None, format!("the agent could not read the cluster: {e}"))
                    }
                    Ok(_) => (None, "the agent disconnected before answering".to_string()),
                    Err(_) => (
                        None,
                        format!(
                            "the agent did not answer within {}s",
                            DESCRIBE_TIMEOUT.as_secs()
                        ),
                    ),
                }
            }
        };
        let revisions = self.revisions(&record.id).await?;
        let mut history = history::to_proto(&revisions);
        history.drain(..history.len().saturating_sub(history::DESCRIBE_HISTORY));
        let hook_runs = self
            .shared
            .store
            .list_hook_runs(&record.id, hooks::DESCRIBE_RUNS)
            .await
            .map_err(store_status)?;
        // Updates do not remap: the last create or promotion that did says what the
        // current spec owes to the deployer's map.
        let remapped = revisions
            .iter()
            .rev()
            .find(|r| !r.remapped.is_empty())
            .map(|r| r.remapped.iter().cloned().map(Into::into).collect())
            .unwrap_or_default();
        let view = self.view(record).await?;
        Ok(Response::new(DeploymentDescription {
            view: Some(view),
            cluster,
            cluster_error,
            history,
            hook_runs: hook_runs.iter().map(hooks::run_to_proto).collect(),
            remapped,
        }))
    }

    async fn create_deployer(
        &self,
        request: Request<CreateDeployerRequest>,
    ) -> Result<Response<CreateDeployerResponse>, Status> {
        let caller = self.authorize(&request, Rpc::CreateDeployer).await?;
        let by = caller.by(String::new());
        let req = request.into_inner();
        let name = req.name;
        ds_core::validate_deployer_name(&name).map_err(invalid)?;
        if !req.stage.is_empty() {
            self.known_stage(&req.stage).await?;
        }
        let token = credentials::generate(credentials::TOKEN_PREFIX);
        let record = self
            .shared
            .store
            .create_deployer_by(&by, &name, &req.stage, &token.id, token.hash)
            .await
            .map_err(store_status)?;
        tracing::info!(deployer = %record.id, name = %record.name, "deployer created");
        Ok(Response::new(CreateDeployerResponse {
            deployer: Some(self.deployer_view(record)),
            token: token.secret,
        }))
    }

    async fn list_deployers(
        &self,
        request: Request<ListDeployersRequest>,
    ) -> Result<Response<ListDeployersResponse>, Status> {
        let caller = self.authorize(&request, Rpc::ListDeployers).await?;
        let deployers = self
            .shared
            .store
            .list_deployers()
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListDeployersResponse {
            deployers: deployers
                .into_iter()
                .filter(|d| caller.principal.can_view(&d.id))
                .map(|d| self.deployer_view(d))
                .collect(),
        }))
    }

    async fn get_deployer(
        &self,
        request: Request<GetDeployerRequest>,
    ) -> Result<Response<Deployer>, Status> {
        let caller = self.authorize(&request, Rpc::GetDeployer).await?;
        let given = &request.get_ref().deployer;
        let record = self.deployer(given).await?;
        self.guard(&caller, &record.id, given).await?;
        let grants = self.grants(&record.id).await?;
        let mut view = self.deployer_view(record);
        view.grants = grants.grants;
        Ok(Response::new(view))
    }

    async fn delete_deployer(
        &self,
        request: Request<DeleteDeployerRequest>,
    ) -> Result<Response<DeleteDeployerResponse>, Status> {
        let by = self
            .authorize(&request, Rpc::DeleteDeployer)
            .await?
            .by(String::new());
        let req = request.into_inner();
        let mode = DeleteMode::try_from(req.mode)
            .map_err(|_| Status::invalid_argument(format!("mode: unknown value {}", req.mode)))?;
        let record = self.deployer(&req.deployer).await?;
        let store = &self.shared.store;
        let mut answer = DeleteDeployerResponse {
            id: record.id.clone(),
            owner_selector: ds_core::ownership::owner_selector(&record.id),
            ..Default::default()
        };
        match mode {
            DeleteMode::Unspecified => {
                if record.deployments > 0 {
                    // The safe default, and what clients older than `mode` get: deleting
                    // now would revoke the token before the agent saw the removals.
                    return Err(Status::failed_precondition(format!(
                        "deployer {} has {} deployments: delete them first, or delete it with mode CASCADE (its deployments, then it once its agent removed their objects) or ORPHAN (now, leaving their objects in the cluster)",
                        record.name, record.deployments
                    )));
                }
                store
                    .delete_deployer_at(&by, &record.id, record.revision)
                    .await
                    .map_err(store_status)?;
                answer.deleted = true;
                tracing::info!(deployer = %record.id, name = %record.name, "deployer deleted; its tokens are revoked");
            }
            DeleteMode::Orphan => {
                let orphan = by.with_note(format!(
                    "orphan: the objects of its {} deployments stay in the cluster",
                    record.deployments
                ));
                store
                    .delete_deployer(&orphan, &record.id)
                    .await
                    .map_err(store_status)?;
                answer.deleted = true;
                answer.deployments_deleted = record.deployments;
                tracing::warn!(deployer = %record.id, name = %record.name, deployments = record.deployments, selector = %answer.owner_selector, "deployer deleted with its objects left in the cluster (orphan); its tokens are revoked");
            }
            DeleteMode::Cascade => {
                for d in store
                    .list_deployments(Some(&record.id))
                    .await
                    .map_err(store_status)?
                {
                    let cascade = by.with_note("deleted with its deployer (cascade)");
                    match store.delete_deployment(&cascade, &d.id).await {
                        Ok((_, revision)) => {
                            answer.deployments_deleted += 1;
                            self.shared.metrics.deployment_changes.inc();
                            tracing::info!(deployment = %d.id, revision, "deployment deleted (deployer cascade)");
                        }
                        Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(store_status(e)),
                    }
                }
                let now = store.get_deployer(&record.id).await.map_err(store_status)?;
                let (connected, stream_seen) = self.shared.presence.get(&now.id);
                let last_seen = if connected {
                    Some(Utc::now())
                } else {
                    now.last_seen.max(stream_seen)
                };
                // Only a count made while the agent held the state without the deleted
                // deployments proves their objects gone (and that it makes no more).
                let reported = now.objects.filter(|o| o.revision >= now.revision);
                answer.objects_left = reported.map(|o| o.owned);
                answer.agent_connected = connected;
                answer.agent_last_seen = last_seen.map(rfc3339).unwrap_or_default();
                // No agent ever connected: nothing was ever written to a cluster.
                let clean = now.deployments == 0
                    && (last_seen.is_none() || reported.is_some_and(|o| o.owned == 0));
                if clean {
                    match store.delete_deployer_at(&by, &now.id, now.revision).await {
                        Ok(()) => {
                            answer.deleted = true;
                            tracing::info!(deployer = %now.id, name = %now.name, "deployer deleted after its agent removed its objects; its tokens are revoked");
                        }
                        // Changed meanwhile (a deployment created): the next call goes on.
                        Err(StoreError::Conflict(_)) => {}
                        Err(e) => return Err(store_status(e)),
                    }
                }
            }
        }
        Ok(Response::new(answer))
    }

    async fn rotate_deployer_token(
        &self,
        request: Request<RotateDeployerTokenRequest>,
    ) -> Result<Response<RotateDeployerTokenResponse>, Status> {
        let caller = self.authorize(&request, Rpc::RotateDeployerToken).await?;
        let by = caller.by(String::new());
        let req = request.into_inner();
        let record = self.deployer(&req.deployer).await?;
        self.guard(&caller, &record.id, &req.deployer).await?;
        let overlap = if req.overlap_seconds == 0 {
            self.shared.token_overlap
        } else {
            std::time::Duration::from_secs(u64::from(req.overlap_seconds))
        };
        let expires = Utc::now()
            + chrono::Duration::from_std(overlap)
                .map_err(|_| Status::invalid_argument("overlap_seconds: too large"))?;
        let token = credentials::generate(credentials::TOKEN_PREFIX);
        self.shared
            .store
            .rotate_token(&by, &record.id, &token.id, token.hash, expires)
            .await
            .map_err(store_status)?;
        tracing::info!(deployer = %record.id, previous_expires_at = %rfc3339(expires), "deployer token rotated");
        Ok(Response::new(RotateDeployerTokenResponse {
            token: token.secret,
            previous_expires_at: rfc3339(expires),
        }))
    }

    async fn create_install_code(
        &self,
        request: Request<CreateInstallCodeRequest>,
    ) -> Result<Response<CreateInstallCodeResponse>, Status> {
        let caller = self.authorize(&request, Rpc::CreateInstallCode).await?;
        let given = request.get_ref().deployer.clone();
        let (id, _) = self.resolve(&given).await?;
        self.guard(&caller, &id, &given).await?;
        let by = caller.by(String::new());
        super::install::create_install_code(&self.shared, &by, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_deployment(
        &self,
        request: Request<CreateDeploymentRequest>,
    ) -> Result<Response<DeploymentView>, Status> {
        let caller = self.authorize(&request, Rpc::CreateDeployment).await?;
        let by = caller.by(String::new());
        let req = request.into_inner();
        let (deployer_id, _) = self.resolve(&req.deployer).await?;
        self.guard(&caller, &deployer_id, &req.deployer).await?;
        let spec: DeploymentSpec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: required"))?
            .into();
        let NewDeployment {
            name,
            namespace,
            spec,
        } = NewDeployment {
            name: req.name,
            namespace: req.namespace,
            spec,
        }
        .validated()
        .map_err(invalid)?;
        let deployer = self
            .shared
            .store
            .get_deployer(&deployer_id)
            .await
            .map_err(store_status)?;
        let view = self
            .create_in(&caller, &by, deployer, name, namespace, spec)
            .await?;
        Ok(Response::new(view))
    }

    async fn list_deployments(
        &self,
        request: Request<ListDeploymentsRequest>,
    ) -> Result<Response<ListDeploymentsResponse>, Status> {
        let caller = self.authorize(&request, Rpc::ListDeployments).await?;
        let req = request.into_inner();
        let store = &self.shared.store;
        let deployer_id = if req.deployer.is_empty() {
            None
        } else {
            let (id, _) = self.resolve(&req.deployer).await?;
            self.guard(&caller, &id, &req.deployer).await?;
            Some(id)
        };
        let after = paging::parse_page_token(&req.page_token)?;
        if let (Some(id), Some(key)) = (&deployer_id, &after)
            && key.deployer_id != *id
        {
            return Err(Status::invalid_argument(
                "page_token: continues another list than this deployer's (pass the same deployer on every page)",
            ));
        }
        if !req.stage.is_empty() {
            self.known_stage(&req.stage).await?;
        }
        let size = paging::list_page_size(req.page_size) as usize;
        // Names and statuses of this page's deployments only: a list of many pages does
        // not read every deployer and status once per page.
        let mut names: HashMap<String, (String, String, Option<AgentPresence>)> = HashMap::new();
        let mut views: Vec<DeploymentView> = Vec::new();
        let mut bytes = 0;
        let mut last = after;
        let mut more = false;
        // Rows are read in batches sized by what the page still has room for, so that a
        // page of a few large deployments does not read (and parse) hundreds of them.
        let mut batch = paging::FIRST_LIST_BATCH;
        'page: while views.len() < size {
            let want = batch.min(size - views.len());
            // One more than wanted: whether anything follows.
            let rows = store
                .list_deployments_page(deployer_id.as_deref(), last.as_ref(), want as u32 + 1)
                .await
                .map_err(store_status)?;
            let follows = rows.len() > want;
            for d in rows.into_iter().take(want) {
                let key = DeploymentKey {
                    deployer_id: d.deployer_id.clone(),
                    namespace: d.namespace.clone(),
                    name: d.name.clone(),
                };
                // `-n` and what the caller may not see: filtered here, after the keyset
                // read, so the token still moves on.
                if (!req.namespace.is_empty() && d.namespace != req.namespace)
                    || !caller.principal.can_view(&d.deployer_id)
                {
                    last = Some(key);
                    continue;
                }
                let (deployer_name, stage, presence) = match names.get(&d.deployer_id) {
                    Some(known) => known.clone(),
                    None => {
                        let known = match store.get_deployer(&d.deployer_id).await {
                            Ok(r) => {
                                let presence = AgentPresence::of(&self.shared, &r.id, r.last_seen);
                                (r.name, r.stage, Some(presence))
                            }
                            // Deleted since the page was read: its deployments go with it.
                            Err(StoreError::NotFound(_)) => (String::new(), String::new(), None),
                            Err(e) => return Err(store_status(e)),
                        };
                        names.insert(d.deployer_id.clone(), known.clone());
                        known
                    }
                };
                // `--stage`: filtered like `-n`, after the keyset read.
                if !req.stage.is_empty() && stage != req.stage {
                    last = Some(key);
                    continue;
                }
                let status = store.get_status(&d.id).await.map_err(store_status)?;
                let mut view = make_view(d, deployer_name, status);
                view.deployer_stage = stage;
                if let Some(presence) = presence {
                    mark(&mut view, presence);
                }
                let len = prost::Message::encoded_len(&view);
                // Bounded by bytes too: a page of large specs stays far below 4 MiB.
                if !views.is_empty() && bytes + len > paging::PAGE_BYTES {
                    more = true;
                    break 'page;
                }
                bytes += len;
                views.push(view);
                last = Some(key);
            }
            more = follows;
            if !follows {
                break;
            }
            let average = bytes / views.len().max(1);
            batch = paging::next_list_batch(paging::PAGE_BYTES.saturating_sub(bytes), average);
        }
        let next_page_token = match last {
            Some(key) if more && !views.is_empty() => paging::page_token(&key),
            _ => String::new(),
        };
        Ok(Response::new(ListDeploymentsResponse {
            deployments: views,
            next_page_token,
        }))
    }

    async fn get_deployment(
        &self,
        request: Request<GetDeploymentRequest>,
    ) -> Result<Response<DeploymentView>, Status> {
        let caller = self.authorize(&request, Rpc::GetDeployment).await?;
        let record = self.select(&caller, request.get_ref()).await?;
        Ok(Response::new(self.view(record).await?))
    }

    async fn update_deployment(
        &self,
        request: Request<UpdateDeploymentRequest>,
    ) -> Result<Response<DeploymentView>, Status> {
        let caller = self.authorize(&request, Rpc::UpdateDeployment).await?;
        let req = request.into_inner();
        let selector = req.selector.clone().ok_or_else(no_selector)?;
        let record = self.select(&caller, &selector).await?;
        let by = caller.by(String::new());
        self.check_deployment_policy(&caller, &by, &record, "deployment.update")
            .await?;
        let view = self
            .change_spec(&by, record, |spec| apply_update(spec, &req))
            .await?;
        Ok(Response::new(view))
    }

    async fn get_deployment_history(
        &self,
        request: Request<GetDeploymentRequest>,
    ) -> Result<Response<DeploymentHistory>, Status> {
        let caller = self.authorize(&request, Rpc::GetDeploymentHistory).await?;
        let record = self.select(&caller, request.get_ref()).await?;
        let revisions = self.revisions(&record.id).await?;
        Ok(Response::new(DeploymentHistory {
            deployment_id: record.id,
            name: record.name,
            revisions: history::to_proto(&revisions),
        }))
    }

    async fn get_deployment_revision(
        &self,
        request: Request<GetDeploymentRevisionRequest>,
    ) -> Result<Response<DeploymentRevision>, Status> {
        let caller = self.authorize(&request, Rpc::GetDeploymentRevision).await?;
        let req = request.into_inner();
        let selector = req.selector.ok_or_else(no_selector)?;
        let record = self.select(&caller, &selector).await?;
        let revisions = self.revisions(&record.id).await?;
        let number = match req.number {
            0 => revisions.last().map_or(0, |r| r.number),
            n => n,
        };
        let i = kept(&revisions, number, "number", &record.name)?;
        let mut revision = history::to_proto(&revisions).swap_remove(i);
        revision.spec = Some(revisions[i].spec.clone().into());
        Ok(Response::new(revision))
    }

    async fn rollback_deployment(
        &self,
        request: Request<RollbackDeploymentRequest>,
    ) -> Result<Response<DeploymentView>, Status> {
        let caller = self.authorize(&request, Rpc::RollbackDeployment).await?;
        let req = request.into_inner();
        let selector = req.selector.ok_or_else(no_selector)?;
        let record = self.select(&caller, &selector).await?;
        self.check_deployment_policy(
            &caller,
            &caller.by(String::new()),
            &record,
            "deployment.rollback",
        )
        .await?;
        let revisions = self.revisions(&record.id).await?;
        let to = match req.to_revision {
            0 if revisions.len() < 2 => {
                return Err(Status::failed_precondition(format!(
                    "deployment {} has no earlier revision to roll back to; see `ds deployment history {}`",
                    record.name, record.name
                )));
            }
            0 => revisions[revisions.len() - 2].number,
            n => n,
        };
        let i = kept(&revisions, to, "to_revision", &record.name)?;
        // Validated again by change_spec: the rules may have tightened since it was made.
        let target = revisions[i].spec.clone();
        let by = ChangeBy {
            action: Some("deployment.rollback"),
            ..caller.by(format!("rollback to revision {to}"))
        };
        let view = self
            .change_spec(&by, record, |spec| spec.clone_from(&target))
            .await?;
        Ok(Response::new(view))
    }

    async fn delete_deployment(
        &self,
        request: Request<DeleteDeploymentRequest>,
    ) -> Result<Response<DeleteDeploymentResponse>, Status> {
        let caller = self.authorize(&request, Rpc::DeleteDeployment).await?;
        let selector = request.into_inner().selector.ok_or_else(no_selector)?;
        let record = self.select(&caller, &selector).await?;
        let by = caller.by(String::new());
        self.check_deployment_policy(&caller, &by, &record, "deployment.delete")
            .await?;
        let (deleted, revision) = self
            .shared
            .store
            .delete_deployment(&by, &record.id)
            .await
            .map_err(store_status)?;
        self.shared.metrics.deployment_changes.inc();
        tracing::info!(deployment = %deleted.id, revision, "deployment deleted");
        Ok(Response::new(DeleteDeploymentResponse {
            id: deleted.id,
            revision,
        }))
    }

    async fn watch_deployment_status(
        &self,
        request: Request<GetDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStatusStream>, Status> {
        let caller = self.authorize(&request, Rpc::WatchDeploymentStatus).await?;
        // Subscribe first so that no change between the first view and the loop is lost.
        let mut touched = self.shared.store.hub().subscribe_touched();
        let record = self.select(&caller, request.get_ref()).await?;
        let id = record.id.clone();
        let first_deployer = record.deployer_id.clone();
        let first = self.view(record).await?;
        let (tx, rx) = mpsc::channel(16);
        let mut last = first.clone();
        let _ = tx.try_send(Ok(first));
        let svc = ControlSvc {
            shared: self.shared.clone(),
            verified_keys: self.verified_keys.clone(),
        };
        let principal = caller.principal.clone();
        let deployer_id = first_deployer;
        let mut access_seen = self.verified_keys.generation.load(Ordering::Acquire);
        tokio::spawn(async move {
            // The agent's presence changes without a stored change (a stream closes, the
            // heartbeat grows old): look again now and then, and send only a difference.
            let mut recheck = tokio::time::interval(PRESENCE_RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            recheck.reset();
            loop {
                let mut rechecking = false;
                let changed = tokio::select! {
                    _ = recheck.tick() => {
                        rechecking = true;
                        true
                    }
                    _ = svc.shared.shutdown.cancelled() => {
                        let _ = tx.try_send(Err(Status::unavailable("gateway shutting down")));
                        break;
                    }
                    _ = tx.closed() => break,
                    t = touched.recv() => match t {
                        Ok(touched_id) => touched_id == id,
                        // Missed some: look again rather than risk missing ours.
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                };
                if !changed {
                    continue;
                }
                // Users, keys, groups or grants changed here: the stream goes on only
                // while its caller may still see the deployment.
                let access_now = svc.verified_keys.generation.load(Ordering::Acquire);
                if access_now != access_seen {
                    access_seen = access_now;
                    match svc.still_sees(&principal, &deployer_id).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = tx
                                .send(Err(Status::not_found(format!("deployment {id} not found"))))
                                .await;
                            break;
                        }
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                }
                let next = match svc.shared.store.get_deployment(&id).await {
                    Ok(record) => svc.view(record).await,
                    Err(StoreError::NotFound(_)) => {
                        Err(Status::not_found(format!("deployment {id} was deleted")))
                    }
                    Err(e) => Err(store_status(e)),
                };
                let end = next.is_err();
                if let Ok(view) = &next {
                    // While an agent streams, its last-seen time is "now": no news alone.
                    let news = DeploymentView {
                        agent_last_seen: last.agent_last_seen.clone(),
                        ..view.clone()
                    } != last;
                    if rechecking && !news {
                        continue;
                    }
                    last = view.clone();
                }
                if tx.send(next).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_version(
        &self,
        request: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        self.authorize(&request, Rpc::GetVersion).await?;
        Ok(Response::new(GetVersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let caller = self.authorize(&request, Rpc::CreateUser).await?;
        let req = request.into_inner();
        ds_core::validate::validate_user_name("name", &req.name).map_err(invalid)?;
        let kind = match UserKind::try_from(req.kind) {
            Ok(UserKind::Unspecified | UserKind::User) => store::UserKind::User,
            Ok(UserKind::ServiceAccount) => store::UserKind::ServiceAccount,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "kind: unknown value {}",
                    req.kind
                )));
            }
        };
        let user = self
            .shared
            .store
            .create_user(&caller.by(String::new()), &req.name, kind, req.admin)
            .await
            .map_err(store_status)?;
        tracing::info!(user = %user.name, kind = kind.as_str(), admin = user.admin, "user created");
        Ok(Response::new(user_to_proto(&user)))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        self.authorize(&request, Rpc::ListUsers).await?;
        let users = self.shared.store.list_users().await.map_err(store_status)?;
        Ok(Response::new(ListUsersResponse {
            users: users.iter().map(user_to_proto).collect(),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let caller = self.authorize(&request, Rpc::DeleteUser).await?;
        let name = request.into_inner().name;
        ds_core::validate::validate_user_name("name", &name).map_err(invalid)?;
        let result = self
            .shared
            .store
            .delete_user(&caller.by(String::new()), &name)
            .await;
        self.verified_keys.invalidate();
        result.map_err(store_status)?;
        tracing::info!(user = %name, "user deleted with its API keys");
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let caller = self.authorize(&request, Rpc::CreateApiKey).await?;
        let req = request.into_inner();
        let user = if req.user.is_empty() {
            caller.principal.name.clone()
        } else {
            ds_core::validate::validate_user_name("user", &req.user).map_err(invalid)?;
            req.user
        };
        self.own_or_admin(&caller, &user)?;
        let lifetime =
            (req.expires_in_seconds > 0).then(|| Duration::from_secs(req.expires_in_seconds));
        ds_core::validate::validate_api_key_lifetime("expires_in_seconds", lifetime)
            .map_err(invalid)?;
        let expires_at = match lifetime {
            Some(d) => Some(
                Utc::now()
                    + chrono::Duration::from_std(d)
                        .map_err(|_| Status::invalid_argument("expires_in_seconds: too large"))?,
            ),
            None => None,
        };
        let key = credentials::generate(credentials::API_KEY_PREFIX);
        let record = self
            .shared
            .store
            .create_api_key(
                &caller.by(String::new()),
                &key.id,
                key.hash,
                &user,
                expires_at,
            )
            .await
            .map_err(store_status)?;
        tracing::info!(key = %record.id, user = %record.user, by = %caller.principal.actor(), "API key created");
        Ok(Response::new(CreateApiKeyResponse {
            key: Some(key_to_proto(&record)),
            secret: key.secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let caller = self.authorize(&request, Rpc::ListApiKeys).await?;
        let user = request.into_inner().user;
        // Without a user: one's own keys, or every key for a gateway admin.
        let filter = match (user.is_empty(), caller.principal.admin) {
            (true, true) => None,
            (true, false) => Some(caller.principal.name.clone()),
            (false, _) => {
                self.own_or_admin(&caller, &user)?;
                Some(user)
            }
        };
        let keys = self
            .shared
            .store
            .list_api_keys(filter.as_deref())
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListApiKeysResponse {
            keys: keys.iter().map(key_to_proto).collect(),
        }))
    }

    async fn delete_api_key(
        &self,
        request: Request<DeleteApiKeyRequest>,
    ) -> Result<Response<DeleteApiKeyResponse>, Status> {
        let caller = self.authorize(&request, Rpc::DeleteApiKey).await?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id: the API key's ID is required"));
        }
        let store = &self.shared.store;
        let owner = store.find_key_owner(&id).await.map_err(store_status)?;
        let Some(owner) = owner else {
            return Err(store_status(StoreError::NotFound(format!("API key {id}"))));
        };
        self.own_or_admin(&caller, &owner.user.name)?;
        let result = store.delete_api_key(&caller.by(String::new()), &id).await;
        self.verified_keys.invalidate();
        let deleted = result.map_err(store_status)?;
        tracing::info!(key = %deleted.id, user = %deleted.user, by = %caller.principal.actor(), "API key deleted");
        Ok(Response::new(DeleteApiKeyResponse {}))
    }

    async fn create_group(
        &self,
        request: Request<CreateGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.authorize(&request, Rpc::CreateGroup).await?;
        let name = request.into_inner().name;
        ds_core::validate::validate_group_name("name", &name).map_err(invalid)?;
        let group = self
            .shared
            .store
            .create_group(&caller.by(String::new()), &name)
            .await
            .map_err(store_status)?;
        self.verified_keys.invalidate();
        tracing::info!(group = %group.name, "group created");
        Ok(Response::new(group_to_proto(&group)))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        self.authorize(&request, Rpc::ListGroups).await?;
        let groups = self
            .shared
            .store
            .list_groups()
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListGroupsResponse {
            groups: groups.iter().map(group_to_proto).collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        let caller = self.authorize(&request, Rpc::DeleteGroup).await?;
        let name = request.into_inner().name;
        ds_core::validate::validate_group_name("name", &name).map_err(invalid)?;
        let result = self
            .shared
            .store
            .delete_group(&caller.by(String::new()), &name)
            .await;
        self.verified_keys.invalidate();
        result.map_err(store_status)?;
        tracing::info!(group = %name, "group deleted with its memberships and grants");
        Ok(Response::new(DeleteGroupResponse {}))
    }

    async fn add_group_member(
        &self,
        request: Request<GroupMemberRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.authorize(&request, Rpc::AddGroupMember).await?;
        let req = request.into_inner();
        ds_core::validate::validate_group_name("group", &req.group).map_err(invalid)?;
        ds_core::validate::validate_user_name("user", &req.user).map_err(invalid)?;
        let result = self
            .shared
            .store
            .add_group_member(&caller.by(String::new()), &req.group, &req.user)
            .await;
        self.verified_keys.invalidate();
        let group = result.map_err(store_status)?;
        tracing::info!(group = %req.group, user = %req.user, "group member added");
        Ok(Response::new(group_to_proto(&group)))
    }

    async fn remove_group_member(
        &self,
        request: Request<GroupMemberRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.authorize(&request, Rpc::RemoveGroupMember).await?;
        let req = request.into_inner();
        ds_core::validate::validate_group_name("group", &req.group).map_err(invalid)?;
        ds_core::validate::validate_user_name("user", &req.user).map_err(invalid)?;
        let result = self
            .shared
            .store
            .remove_group_member(&caller.by(String::new()), &req.group, &req.user)
            .await;
        self.verified_keys.invalidate();
        let group = result.map_err(store_status)?;
        tracing::info!(group = %req.group, user = %req.user, "group member removed");
        Ok(Response::new(group_to_proto(&group)))
    }

    async fn grant_deployer(
        &self,
        request: Request<GrantDeployerRequest>,
    ) -> Result<Response<DeployerGrants>, Status> {
        let caller = self.authorize(&request, Rpc::GrantDeployer).await?;
        let req = request.into_inner();
        let id = self.guarded_deployer(&caller, &req.deployer).await?;
        ds_core::validate::validate_group_name("group", &req.group).map_err(invalid)?;
        let role = role_of(req.role)?;
        let result = self
            .shared
            .store
            .grant_deployer(&caller.by(String::new()), &id, &req.group, role)
            .await;
        self.verified_keys.invalidate();
        result.map_err(store_status)?;
        tracing::info!(deployer = %id, group = %req.group, role = role.as_str(), by = %caller.principal.actor(), "role granted");
        Ok(Response::new(self.grants(&id).await?))
    }

    async fn revoke_deployer(
        &self,
        request: Request<RevokeDeployerRequest>,
    ) -> Result<Response<DeployerGrants>, Status> {
        let caller = self.authorize(&request, Rpc::RevokeDeployer).await?;
        let req = request.into_inner();
        let id = self.guarded_deployer(&caller, &req.deployer).await?;
        ds_core::validate::validate_group_name("group", &req.group).map_err(invalid)?;
        let result = self
            .shared
            .store
            .revoke_deployer(&caller.by(String::new()), &id, &req.group)
            .await;
        self.verified_keys.invalidate();
        if let Err(StoreError::NotFound(_)) = result {
            return Err(Status::not_found(format!(
                "group {} has no role on deployer {}",
                ds_core::validate::cut(&req.group),
                ds_core::validate::cut(&req.deployer)
            )));
        }
        result.map_err(store_status)?;
        tracing::info!(deployer = %id, group = %req.group, by = %caller.principal.actor(), "role revoked");
        Ok(Response::new(self.grants(&id).await?))
    }

    async fn list_stages(
        &self,
        request: Request<ListStagesRequest>,
    ) -> Result<Response<ListStagesResponse>, Status> {
        self.authorize(&request, Rpc::ListStages).await?;
        let stages = self
            .shared
            .store
            .list_stages()
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListStagesResponse {
            stages: stages
                .into_iter()
                .enumerate()
                .map(|(i, s)| stage_to_proto(s, i + 1))
                .collect(),
        }))
    }

    async fn create_stage(
        &self,
        request: Request<CreateStageRequest>,
    ) -> Result<Response<Stage>, Status> {
        let by = self
            .authorize(&request, Rpc::CreateStage)
            .await?
            .by(String::new());
        let req = request.into_inner();
        ds_core::validate::validate_stage_name("name", &req.name).map_err(invalid)?;
        let place = match (req.after.is_empty(), req.position) {
            (true, 0) => StagePlace::Last,
            (true, n) => StagePlace::At(n),
            (false, 0) => {
                self.known_stage(&req.after).await.map_err(|_| {
                    Status::invalid_argument(format!(
                        "after: no stage named {:?} (see `ds stage ls`)",
                        ds_core::validate::cut(&req.after)
                    ))
                })?;
                StagePlace::After(req.after.clone())
            }
            (false, _) => {
                return Err(Status::invalid_argument(
                    "after: give either after or position, not both",
                ));
            }
        };
        let deploy_by = deploy_by(req.deploy_by)?.unwrap_or(DeployBy::Anyone);
        let store = &self.shared.store;
        let stage = store
            .create_stage(&by, &req.name, &place, deploy_by)
            .await
            .map_err(store_status)?;
        tracing::info!(stage = %stage.name, actor = %by.actor, "stage created");
        self.stage_view(stage).await.map(Response::new)
    }

    async fn delete_stage(
        &self,
        request: Request<DeleteStageRequest>,
    ) -> Result<Response<DeleteStageResponse>, Status> {
        let by = self
            .authorize(&request, Rpc::DeleteStage)
            .await?
            .by(String::new());
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name: a stage name is required"));
        }
        self.known_stage(&name).await?;
        self.shared
            .store
            .delete_stage(&by, &name)
            .await
            .map_err(store_status)?;
        tracing::info!(stage = %name, actor = %by.actor, "stage deleted");
        Ok(Response::new(DeleteStageResponse { name }))
    }

    async fn rename_stage(
        &self,
        request: Request<RenameStageRequest>,
    ) -> Result<Response<Stage>, Status> {
        let by = self
            .authorize(&request, Rpc::RenameStage)
            .await?
            .by(String::new());
        let req = request.into_inner();
        self.known_stage(&req.name).await?;
        ds_core::validate::validate_stage_name("new_name", &req.new_name).map_err(invalid)?;
        let stage = self
            .shared
            .store
            .rename_stage(&by, &req.name, &req.new_name)
            .await
            .map_err(store_status)?;
        tracing::info!(from = %req.name, to = %stage.name, actor = %by.actor, "stage renamed");
        self.stage_view(stage).await.map(Response::new)
    }

    async fn update_stage(
        &self,
        request: Request<UpdateStageRequest>,
    ) -> Result<Response<Stage>, Status> {
        let by = self
            .authorize(&request, Rpc::UpdateStage)
            .await?
            .by(String::new());
        let req = request.into_inner();
        self.known_stage(&req.name).await?;
        let Some(deploy_by) = deploy_by(req.deploy_by)? else {
            return Err(Status::invalid_argument(
                "deploy_by: required (anyone or service-accounts)",
            ));
        };
        let stage = self
            .shared
            .store
            .update_stage(&by, &req.name, deploy_by)
            .await
            .map_err(store_status)?;
        tracing::info!(stage = %stage.name, deploy_by = stage.deploy_by.as_str(), actor = %by.actor, "stage updated");
        self.stage_view(stage).await.map(Response::new)
    }

    async fn update_deployer(
        &self,
        request: Request<UpdateDeployerRequest>,
    ) -> Result<Response<Deployer>, Status> {
        let by = self
            .authorize(&request, Rpc::UpdateDeployer)
            .await?
            .by(String::new());
        let req = request.into_inner();
        let record = self.deployer(&req.deployer).await?;
        if let Some(stage) = &req.stage {
            if stage.is_empty() {
                return Err(Status::invalid_argument("stage: must not be empty"));
            }
            self.known_stage(stage).await?;
        }
        let update = DeployerUpdate {
            stage: req.stage,
            ..DeployerUpdate::default()
        };
        let updated = self
            .shared
            .store
            .update_deployer(&by, &record.id, &update)
            .await
            .map_err(store_status)?;
        tracing::info!(deployer = %updated.id, stage = %updated.stage, actor = %by.actor, "deployer updated");
        Ok(Response::new(self.deployer_view(updated)))
    }

    async fn add_hook(&self, request: Request<AddHookRequest>) -> Result<Response<Hook>, Status> {
        self.add_hook_rpc(request).await.map(Response::new)
    }

    async fn list_hooks(
        &self,
        request: Request<ListHooksRequest>,
    ) -> Result<Response<ListHooksResponse>, Status> {
        self.list_hooks_rpc(request).await.map(Response::new)
    }

    async fn remove_hook(
        &self,
        request: Request<RemoveHookRequest>,
    ) -> Result<Response<Hook>, Status> {
        self.remove_hook_rpc(request).await.map(Response::new)
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.authorize(&request, Rpc::ListAudit).await?;
        let req = request.into_inner();
        let since = if req.since.is_empty() {
            None
        } else {
            Some(
                chrono::DateTime::parse_from_rfc3339(&req.since)
                    .map_err(|_| {
                        Status::invalid_argument(format!(
                            "since: {:?} is not an RFC 3339 time (e.g. 2026-12-01T10:00:00Z)",
                            ds_core::validate::cut(&req.since)
                        ))
                    })?
                    .with_timezone(&Utc),
            )
        };
        // A deleted deployer's rows stay: an unknown name or ID is taken as an ID.
        let deployer_id = if req.deployer.is_empty() {
            None
        } else {
            match self.shared.store.resolve_deployer(&req.deployer).await {
                Ok((id, _)) => Some(id),
                Err(StoreError::NotFound(_)) => Some(req.deployer.clone()),
                Err(e) => return Err(store_status(e)),
            }
        };
        let after_id = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse::<u64>()
                .map_err(|_| Status::invalid_argument("page_token: not a token of ListAudit"))?
        };
        let limit = match req.limit {
            0 => AUDIT_PAGE,
            n => n.min(AUDIT_PAGE_MAX),
        };
        let mut rows = self
            .shared
            .store
            .list_audit(&AuditQuery {
                since,
                actor: (!req.actor.is_empty()).then_some(req.actor),
                deployer_id,
                after_id,
                // One more: whether anything follows.
                limit: limit + 1,
            })
            .await
            .map_err(store_status)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListAuditResponse {
            entries: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn set_deployer_remap(
        &self,
        request: Request<SetDeployerRemapRequest>,
    ) -> Result<Response<Deployer>, Status> {
        let caller = self.authorize(&request, Rpc::SetDeployerRemap).await?;
        let req = request.into_inner();
        let record = self.deployer(&req.deployer).await?;
        self.guard(&caller, &record.id, &req.deployer).await?;
        for name in &req.remove_env {
            if !req.clear && !record.remap.env.iter().any(|e| &e.name == name) {
                return Err(Status::invalid_argument(format!(
                    "--remove-env: deployer {} has no env entry for {:?} (see `ds deployer get {}`)",
                    record.name,
                    ds_core::validate::cut(name),
                    record.name
                )));
            }
        }
        for from in &req.remove_secrets {
            if !req.clear && !record.remap.secrets.iter().any(|s| &s.from == from) {
                return Err(Status::invalid_argument(format!(
                    "--remove-secret: deployer {} has no secret entry for {:?} (see `ds deployer get {}`)",
                    record.name,
                    ds_core::validate::cut(from),
                    record.name
                )));
            }
        }
        let edit = RemapEdit {
            set_env: req.set_env.into_iter().map(Into::into).collect(),
            set_secrets: req.set_secrets.into_iter().map(Into::into).collect(),
            remove_env: req.remove_env,
            remove_secrets: req.remove_secrets,
            clear: req.clear,
        };
        // Checked on the map as read here for a clear answer; the store applies the edit
        // (and checks it again) on the map as its transaction reads it.
        ds_core::remap::validate(&edit.apply_to(&record.remap)).map_err(invalid)?;
        let by = caller.by(String::new());
        let update = DeployerUpdate {
            remap: Some(edit),
            ..DeployerUpdate::default()
        };
        let updated = self
            .shared
            .store
            .update_deployer(&by, &record.id, &update)
            .await
            .map_err(store_status)?;
        tracing::info!(deployer = %updated.id, env = updated.remap.env.len(), secrets = updated.remap.secrets.len(), actor = %by.actor, "deployer remapping changed");
        Ok(Response::new(self.deployer_view(updated)))
    }

    async fn promote_deployment(
        &self,
        request: Request<PromoteDeploymentRequest>,
    ) -> Result<Response<PromoteDeploymentResponse>, Status> {
        let caller = self.authorize(&request, Rpc::PromoteDeployment).await?;
        let req = request.into_inner();
        let selector = req.selector.ok_or_else(no_selector)?;
        if req.to_deployer.is_empty() {
            return Err(Status::invalid_argument(
                "to_deployer: the target deployer (ID or name) is required (--to)",
            ));
        }
        // View on the source: being visible is enough to copy it.
        let source = self.select_visible(&caller, &selector).await?;
        // Deploy on the target (NOT_FOUND when invisible, as everywhere).
        let target_id = self.guarded_deployer(&caller, &req.to_deployer).await?;
        let (_, source_deployer) = self.resolve(&source.deployer_id).await?;
        if target_id == source.deployer_id {
            return Err(Status::invalid_argument(format!(
                "to_deployer: deployment {} is on deployer {source_deployer} already; promote it to another deployer",
                source.name
            )));
        }
        let source_revision = self
            .revisions(&source.id)
            .await?
            .last()
            .map_or(0, |r| r.number);
        let target = self.deployer(&target_id).await?;
        let by = ChangeBy {
            action: Some("deployment.promote"),
            ..caller.by(format!(
                "promoted from {source_deployer} revision {source_revision}"
            ))
        };
        let existing = self
            .shared
            .store
            .find_deployments(&DeploymentSelector {
                deployment: source.name.clone(),
                deployer_id: Some(target_id.clone()),
                namespace: Some(source.namespace.clone()),
            })
            .await
            .map_err(store_status)?
            .into_iter()
            .find(|d| d.name == source.name && d.namespace == source.namespace);
        let (spec, remapped) = ds_core::remap::apply(&source.spec, &target.remap);
        let target_name = target.name.clone();
        // Through the paths every create and change takes, so that validation, the stage
        // policy, revisions and the audit log apply to a promotion as to any change.
        let (view, created) = match existing {
            None => {
                let view = self
                    .create_in(
                        &caller,
                        &by,
                        target,
                        source.name.clone(),
                        source.namespace.clone(),
                        source.spec.clone(),
                    )
                    .await?;
                (view, true)
            }
            Some(record) => {
                self.check_deployment_policy(&caller, &by, &record, "deployment.promote")
                    .await?;
                let by = ChangeBy {
                    remapped: remapped.clone(),
                    ..by
                };
                let view = self
                    .change_spec(&by, record, |s| s.clone_from(&spec))
                    .await?;
                (view, false)
            }
        };
        tracing::info!(deployment = %source.id, from = %source_deployer, to = %target_name, source_revision, created, remapped = remapped.len(), actor = %caller.principal.actor(), "deployment promoted");
        Ok(Response::new(PromoteDeploymentResponse {
            view: Some(view),
            created,
            source_revision,
            remapped: remapped.into_iter().map(Into::into).collect(),
        }))
    }
}

// The hooks' RPCs: access checks here, the rules and conversions in hooks.rs.
impl ControlSvc {
    async fn add_hook_rpc(&self, request: Request<AddHookRequest>) -> Result<Hook, Status> {
        let caller = self.authorize(&request, Rpc::AddHook).await?;
        let req = request.into_inner();
        let (id, name) = self.resolve(&req.deployer).await?;
        self.guard(&caller, &id, &req.deployer).await?;
        let new = hooks::new_hook(&self.shared.hooks, &req)?;
        let record = self
            .shared
            .store
            .create_hook(&caller.by(String::new()), &id, &new)
            .await
            .map_err(store_status)?;
        tracing::info!(hook = record.id, deployer = %id, phase = record.phase.as_str(), by = %caller.principal.actor(), "hook added");
        Ok(hooks::hook_to_proto(&record, &name))
    }

    async fn list_hooks_rpc(
        &self,
        request: Request<ListHooksRequest>,
    ) -> Result<ListHooksResponse, Status> {
        let caller = self.authorize(&request, Rpc::ListHooks).await?;
        let given = request.into_inner().deployer;
        let store = &self.shared.store;
        let names: HashMap<String, String> = if given.is_empty() {
            store
                .list_deployers()
                .await
                .map_err(store_status)?
                .into_iter()
                .filter(|d| caller.principal.can_view(&d.id))
                .map(|d| (d.id, d.name))
                .collect()
        } else {
            let (id, name) = self.resolve(&given).await?;
            self.guard(&caller, &id, &given).await?;
            HashMap::from([(id, name)])
        };
        let only = (!given.is_empty()).then(|| names.keys().next().cloned().unwrap_or_default());
        let found = store
            .list_hooks(only.as_deref())
            .await
            .map_err(store_status)?;
        Ok(ListHooksResponse {
            hooks: found
                .iter()
                .filter_map(|h| {
                    let name = names.get(&h.deployer_id)?;
                    Some(hooks::hook_to_proto(h, name))
                })
                .collect(),
        })
    }

    async fn remove_hook_rpc(&self, request: Request<RemoveHookRequest>) -> Result<Hook, Status> {
        let caller = self.authorize(&request, Rpc::RemoveHook).await?;
        let id = request.into_inner().id;
        let not_found = || Status::not_found(format!("hook {id} not found; see `ds hook ls`"));
        let hook = match self.shared.store.get_hook(id).await {
            Ok(hook) => hook,
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(store_status(e)),
        };
        // A hook of a deployer the caller cannot see does not exist for it.
        if !caller.principal.can_view(&hook.deployer_id) {
            return Err(not_found());
        }
        self.guard(&caller, &hook.deployer_id, "").await?;
        let removed = match self
            .shared
            .store
            .delete_hook(&caller.by(String::new()), id)
            .await
        {
            Ok(removed) => removed,
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(store_status(e)),
        };
        let (_, name) = self.resolve(&removed.deployer_id).await?;
        tracing::info!(hook = id, deployer = %removed.deployer_id, by = %caller.principal.actor(), "hook removed");
        Ok(hooks::hook_to_proto(&removed, &name))
    }
}

/// The store's role for a request's, or INVALID_ARGUMENT naming the field.
fn role_of(role: i32) -> Result<Role, Status> {
    match DeployerRole::try_from(role) {
        Ok(DeployerRole::View) => Ok(Role::View),
        Ok(DeployerRole::Deploy) => Ok(Role::Deploy),
        Ok(DeployerRole::Admin) => Ok(Role::Admin),
        _ => Err(Status::invalid_argument(
            "role: must be one of view, deploy, admin",
        )),
    }
}

/// Audit rows per ListAudit page unless asked otherwise, and the most.
const AUDIT_PAGE: u32 = 500;
const AUDIT_PAGE_MAX: u32 = 1000;

/// A request's DeployBy: `None` when unspecified.
fn deploy_by(value: i32) -> Result<Option<DeployBy>, Status> {
    match ds_core::proto::DeployBy::try_from(value) {
        Ok(ds_core::proto::DeployBy::Unspecified) => Ok(None),
        Ok(ds_core::proto::DeployBy::Anyone) => Ok(Some(DeployBy::Anyone)),
        Ok(ds_core::proto::DeployBy::ServiceAccounts) => Ok(Some(DeployBy::ServiceAccounts)),
        Err(_) => Err(Status::invalid_argument(format!(
            "deploy_by: unknown value {value} (anyone or service-accounts)"
        ))),
    }
}

/// The index of revision `number` in `revisions`, or an error naming `field` and what is
/// kept.
fn kept(
    revisions: &[RevisionRecord],
    number: u64,
    field: &str,
    name: &str,
) -> Result<usize, Status> {
    revisions
        .iter()
        .position(|r| r.number == number)
        .ok_or_else(|| {
            let range = match (revisions.first(), revisions.last()) {
                (Some(a), Some(b)) if a.number == b.number => format!("only revision {}", a.number),
                (Some(a), Some(b)) => format!("revisions {} to {}", a.number, b.number),
                _ => "no revisions".to_string(),
            };
            Status::not_found(format!(
                "{field}: deployment {name} has no revision {number}; {range} are kept (see `ds deployment history {name}`)"
            ))
        })
}

/// The refusal of a request that names no deployment.
fn no_selector() -> Status {
    Status::invalid_argument("selector: required")
}
