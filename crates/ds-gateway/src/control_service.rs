//! The control service the CLI calls: deployers, deployments, token rotation and the
//! status watch behind `--wait`; authenticated by the admin API key.

use super::Shared;
use super::convert::{deployer_to_proto, rfc3339};
use super::credentials;
use super::history;
use super::paging;
use super::presence::{AgentPresence, mark};
use super::rpc::{bearer, store_status};
use super::store::{
    ChangeBy, DeployerRecord, DeploymentKey, DeploymentRecord, DeploymentSelector, RevisionRecord,
    StoreError,
};
use chrono::Utc;
use ds_core::proto::control_service_server::ControlService;
use ds_core::proto::{
    CreateDeployerRequest, CreateDeployerResponse, CreateDeploymentRequest,
    CreateInstallCodeRequest, CreateInstallCodeResponse, DeleteDeployerRequest,
    DeleteDeployerResponse, DeleteDeploymentRequest, DeleteDeploymentResponse, DeleteMode,
    Deployer, DeploymentDescription, DeploymentHistory, DeploymentLogsRequest, DeploymentRevision,
    DeploymentView, DescribeQuery, GetDeployerRequest, GetDeploymentRequest,
    GetDeploymentRevisionRequest, GetVersionRequest, GetVersionResponse, ListDeployersRequest,
    ListDeployersResponse, ListDeploymentsRequest, ListDeploymentsResponse, LogLines, LogsQuery,
    RollbackDeploymentRequest, RotateDeployerTokenRequest, RotateDeployerTokenResponse,
    UpdateDeploymentRequest, inspect_reply, inspect_request,
};
use ds_core::{DeploymentSpec, NewDeployment};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
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

/// The hash of the last verified API key and when it was verified.
type KeyCache = Arc<Mutex<Option<([u8; 32], Instant)>>>;

/// The ControlService implementation.
pub struct ControlSvc {
    shared: Arc<Shared>,
    /// Hash of the last verified API key and when it was verified: saves a database
    /// read per CLI call (create throughput) while a removed key stops working in
    /// at most [`API_KEY_CACHE_TTL`].
    verified_key: KeyCache,
}

impl ControlSvc {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            verified_key: Arc::new(Mutex::new(None)),
        }
    }

    /// Checks the caller's API key; returns who the caller is, as revisions record it:
    /// `key <its public ID>` (never the secret).
    async fn authorize<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let presented = bearer(req).inspect_err(|_| {
            self.shared.metrics.auth_failures.inc();
        })?;
        let actor = || {
            credentials::parse_id(credentials::API_KEY_PREFIX, presented)
                .map(|id| format!("key {id}"))
                .unwrap_or_default()
        };
        let hash = credentials::hash(presented);
        let cached = *self.verified_key.lock();
        if let Some((known, at)) = cached {
            let same: bool = known.ct_eq(&hash).into();
            if same && at.elapsed() < API_KEY_CACHE_TTL {
                return Ok(actor());
            }
        }
        match credentials::verify_api_key(self.shared.store.as_ref(), presented).await {
            Ok(true) => {
                *self.verified_key.lock() = Some((hash, Instant::now()));
                Ok(actor())
            }
            Ok(false) => {
                self.shared.metrics.auth_failures.inc();
                tracing::warn!("rejected an API key");
                Err(Status::unauthenticated("invalid API key"))
            }
            Err(e) => Err(store_status(e)),
        }
    }

    /// A deployment's kept revisions, oldest first.
    async fn revisions(&self, deployment_id: &str) -> Result<Vec<RevisionRecord>, Status> {
        self.shared
            .store
            .list_revisions(deployment_id)
            .await
            .map_err(store_status)
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
            match self
                .shared
                .store
                .update_deployment_by(by, &record.id, record.revision, &spec)
                .await
            {
                Ok(updated) => {
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

    /// Resolves a selector to exactly one deployment.
    async fn select(&self, sel: &GetDeploymentRequest) -> Result<DeploymentRecord, Status> {
        if sel.deployment.is_empty() {
            return Err(Status::invalid_argument(
                "deployment: an ID or name is required",
            ));
        }
        let deployer_id = if sel.deployer.is_empty() {
            None
        } else {
            Some(self.resolve(&sel.deployer).await?.0)
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
        let (deployer_name, last_seen) = store
            .get_deployer(&d.deployer_id)
            .await
            .map(|r| (r.name, r.last_seen))
            .unwrap_or_default();
        let presence = AgentPresence::of(&self.shared, &d.deployer_id, last_seen);
        let status = store.get_status(&d.id).await.map_err(store_status)?;
        let mut view = make_view(d, deployer_name, status);
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
}

#[tonic::async_trait]
impl ControlService for ControlSvc {
    type WatchDeploymentStatusStream = DeploymentViewStream;
    type DeploymentLogsStream = LogLinesStream;

    async fn deployment_logs(
        &self,
        request: Request<DeploymentLogsRequest>,
    ) -> Result<Response<Self::DeploymentLogsStream>, Status> {
        self.authorize(&request).await?;
        let req = request.into_inner();
        let container = ds_core::validate::logs_container(&req.container).map_err(invalid)?;
        ds_core::validate::logs_window(req.tail_lines, req.since_seconds).map_err(invalid)?;
        let record = self.select(&req.selector.unwrap_or_default()).await?;
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
        self.authorize(&request).await?;
        let record = self.select(request.get_ref()).await?;
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
        let view = self.view(record).await?;
        Ok(Response::new(DeploymentDescription {
            view: Some(view),
            cluster,
            cluster_error,
            history,
        }))
    }

    async fn create_deployer(
        &self,
        request: Request<CreateDeployerRequest>,
    ) -> Result<Response<CreateDeployerResponse>, Status> {
        self.authorize(&request).await?;
        let name = request.into_inner().name;
        ds_core::validate_deployer_name(&name).map_err(invalid)?;
        let token = credentials::generate(credentials::TOKEN_PREFIX);
        let record = self
            .shared
            .store
            .create_deployer(&name, &token.id, token.hash)
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
        self.authorize(&request).await?;
        let deployers = self
            .shared
            .store
            .list_deployers()
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListDeployersResponse {
            deployers: deployers
                .into_iter()
                .map(|d| self.deployer_view(d))
                .collect(),
        }))
    }

    async fn get_deployer(
        &self,
        request: Request<GetDeployerRequest>,
    ) -> Result<Response<Deployer>, Status> {
        self.authorize(&request).await?;
        let record = self.deployer(&request.get_ref().deployer).await?;
        Ok(Response::new(self.deployer_view(record)))
    }

    async fn delete_deployer(
        &self,
        request: Request<DeleteDeployerRequest>,
    ) -> Result<Response<DeleteDeployerResponse>, Status> {
        self.authorize(&request).await?;
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
                    .delete_deployer_at(&record.id, record.revision)
                    .await
                    .map_err(store_status)?;
                answer.deleted = true;
                tracing::info!(deployer = %record.id, name = %record.name, "deployer deleted; its tokens are revoked");
            }
            DeleteMode::Orphan => {
                store
                    .delete_deployer(&record.id)
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
                    match store.delete_deployment(&d.id).await {
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
                    match store.delete_deployer_at(&now.id, now.revision).await {
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
        self.authorize(&request).await?;
        let req = request.into_inner();
        let record = self.deployer(&req.deployer).await?;
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
            .rotate_token(&record.id, &token.id, token.hash, expires)
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
        self.authorize(&request).await?;
        super::install::create_install_code(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_deployment(
        &self,
        request: Request<CreateDeploymentRequest>,
    ) -> Result<Response<DeploymentView>, Status> {
        let actor = self.authorize(&request).await?;
        let req = request.into_inner();
        let (deployer_id, deployer_name) = self.resolve(&req.deployer).await?;
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
        let record = self
            .shared
            .store
            .create_deployment_by(
                &ChangeBy {
                    actor,
                    note: String::new(),
                },
                &deployer_id,
                &name,
                &namespace,
                &spec,
            )
            .await
            .map_err(store_status)?;
        self.shared.metrics.deployment_changes.inc();
        tracing::info!(deployment = %record.id, deployer = %deployer_id, namespace = %record.namespace, name = %record.name, revision = record.revision, "deployment created");
        let presence = AgentPresence::of(&self.shared, &deployer_id, deployer.last_seen);
        let mut view = make_view(record, deployer_name, None);
        mark(&mut view, presence);
        Ok(Response::new(view))
    }

    async fn list_deployments(
        &self,
        request: Request<ListDeploymentsRequest>,
    ) -> Result<Response<ListDeploymentsResponse>, Status> {
        self.authorize(&request).await?;
        let req = request.into_inner();
        let store = &self.shared.store;
        let deployer_id = if req.deployer.is_empty() {
            None
        } else {
            Some(self.resolve(&req.deployer).await?.0)
        };
        let after = paging::parse_page_token(&req.page_token)?;
        if let (Some(id), Some(key)) = (&deployer_id, &after)
            && key.deployer_id != *id
        {
            return Err(Status::invalid_argument(
                "page_token: continues another list than this deployer's (pass the same deployer on every page)",
            ));
        }
        let size = paging::list_page_size(req.page_size) as usize;
        // Names and statuses of this page's deployments only: a list of many pages does
        // not read every deployer and status once per page.
        let mut names: HashMap<String, (String, Option<AgentPresence>)> = HashMap::new();
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
                // `-n`: filtered here, after the keyset read, so the token still moves on.
                if !req.namespace.is_empty() && d.namespace != req.namespace {
                    last = Some(key);
                    continue;
                }
                let (deployer_name, presence) = match names.get(&d.deployer_id) {
                    Some(known) => known.clone(),
                    None => {
                        let known = match store.get_deployer(&d.deployer_id).await {
                            Ok(r) => {
                                let presence = AgentPresence::of(&self.shared, &r.id, r.last_seen);
                                (r.name, Some(presence))
                            }
                            // Deleted since the page was read: its deployments go with it.
                            Err(StoreError::NotFound(_)) => (String::new(), None),
                            Err(e) => return Err(store_status(e)),
                        };
                        names.insert(d.deployer_id.clone(), known.clone());
                        known
                    }
                };
                let status = store.get_status(&d.id).await.map_err(store_status)?;
                let mut view = make_view(d, deployer_name, status);
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
        self.authorize(&request).await?;
        let record = self.select(request.get_ref()).await?;
        Ok(Response::new(self.view(record).await?))
    }

    async fn update_deployment(
        &self,
        request: Request<UpdateDeploymentRequest>,
    ) -> Result<Response<DeploymentView>, Status> {
        let actor = self.authorize(&request).await?;
        let req = request.into_inner();
        let selector = req.selector.clone().ok_or_else(no_selector)?;
        let record = self.select(&selector).await?;
        let by = ChangeBy {
            actor,
            note: String::new(),
        };
        let view = self
            .change_spec(&by, record, |spec| apply_update(spec, &req))
            .await?;
        Ok(Response::new(view))
    }

    async fn get_deployment_history(
        &self,
        request: Request<GetDeploymentRequest>,
    ) -> Result<Response<DeploymentHistory>, Status> {
        self.authorize(&request).await?;
        let record = self.select(request.get_ref()).await?;
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
        self.authorize(&request).await?;
        let req = request.into_inner();
        let selector = req.selector.ok_or_else(no_selector)?;
        let record = self.select(&selector).await?;
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
        let actor = self.authorize(&request).await?;
        let req = request.into_inner();
        let selector = req.selector.ok_or_else(no_selector)?;
        let record = self.select(&selector).await?;
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
            actor,
            note: format!("rollback to revision {to}"),
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
        self.authorize(&request).await?;
        let selector = request.into_inner().selector.ok_or_else(no_selector)?;
        let record = self.select(&selector).await?;
        let (deleted, revision) = self
            .shared
            .store
            .delete_deployment(&record.id)
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
        self.authorize(&request).await?;
        // Subscribe first so that no change between the first view and the loop is lost.
        let mut touched = self.shared.store.hub().subscribe_touched();
        let record = self.select(request.get_ref()).await?;
        let id = record.id.clone();
        let first = self.view(record).await?;
        let (tx, rx) = mpsc::channel(16);
        let mut last = first.clone();
        let _ = tx.try_send(Ok(first));
        let svc = ControlSvc {
            shared: self.shared.clone(),
            verified_key: self.verified_key.clone(),
        };
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
        self.authorize(&request).await?;
        Ok(Response::new(GetVersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
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
