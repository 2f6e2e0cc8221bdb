//! Deployment hooks: the programs (inside `--hooks-dir`) and URLs a deployer's Admins
//! attach to its changes, run by the gateway with a gateway-wide limit of slots. Pre-hooks
//! run before a create, update or rollback is stored and refuse it when they fail;
//! post-hooks run once the agent reports the change's revision Available or Failed.
//!
//! # What a hook receives
//! A command hook gets the JSON below on stdin, and in a clean environment only `PATH`
//! (`/usr/bin:/bin`) and `DS_HOOK_PHASE` (`pre`/`post`), `DS_HOOK_DEPLOYER` (its name),
//! `DS_HOOK_DEPLOYMENT`, `DS_HOOK_NAMESPACE`, `DS_HOOK_REVISION`, `DS_HOOK_ACTOR`, and for
//! post-hooks `DS_HOOK_STATUS` (`available`/`failed`). An HTTP hook gets the same JSON as
//! the body of a POST (`content-type: application/json`):
//!
//! ```json
//! {
//!   "phase": "pre",
//!   "deployer": {"id": "…", "name": "prod-eu"},
//!   "deployment": {"id": "…", "name": "iris", "namespace": "default"},
//!   "revision": 3,
//!   "actor": "alice (key 0123456789abcdef)",
//!   "spec": {"model_name": "iris", "image": "…", "replicas": 2, …},
//!   "status": "available"
//! }
//! ```
//!
//! `deployment.id` is empty for a create (nothing is stored before the pre-hooks pass);
//! `revision` is the deployment revision the change makes; `status` is in post-hooks
//! only. The spec holds no secret values (Secrets appear by name only).
//!
//! A command exits 0 for success; an HTTP hook answers 2xx. Anything else, its timeout,
//! or no free slot within the phase's wait (`--hook-pre-wait`, `--hook-post-wait`) is a
//! failure.

use super::Shared;
use super::convert::rfc3339;
use super::metrics::Metrics;
use super::rpc::store_status;
use super::store::{
    ChangeBy, DeployerRecord, DeploymentRecord, HookOutcome, HookPhase, HookRecord, HookRunRecord,
    HookTarget, NewHook, Store, StoreError,
};
use bytes::Bytes;
use chrono::Utc;
use ds_core::DeploymentSpec;
use ds_core::proto::{self, Phase};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The most of a hook's output kept (its end).
pub(crate) const OUTPUT_CAP: usize = 4096;

/// A hook's timeout unless it names one.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// After a command exits, how long its output is still read (a child it left behind may
/// hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// The hook runs of `describe`.
pub(crate) const DESCRIBE_RUNS: u32 = 10;

/// The most of an output tail a refusal's message carries.
const MESSAGE_TAIL: usize = 1024;

/// The hook settings of the gateway (its `--hook*` flags).
#[derive(Debug, Clone)]
pub(crate) struct HookSettings {
    /// Where command hooks live; `None`: command hooks are refused.
    pub dir: Option<PathBuf>,
    /// Hooks running at once on this gateway.
    pub slots: u32,
    /// How long a pre-hook waits for a slot.
    pub pre_wait: Duration,
    /// How long a post-hook waits for a slot.
    pub post_wait: Duration,
    /// How long a post-hook waits for the agent's Available or Failed of its revision.
    pub post_status_wait: Duration,
    /// The longest timeout a hook may have.
    pub max_timeout: Duration,
}

/// The gateway's hook runner: its settings, its slots, and the HTTP client of URL hooks.
pub(crate) struct Hooks {
    settings: HookSettings,
    slots: Arc<Semaphore>,
    http: tokio::sync::OnceCell<Result<HttpClient, String>>,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// What a hook is run for: the change and who made it.
#[derive(Debug, Clone)]
pub(crate) struct HookContext {
    pub deployer_id: String,
    pub deployer_name: String,
    /// Empty for a create.
    pub deployment_id: String,
    pub name: String,
    pub namespace: String,
    /// The deployment revision (1, 2, 3…) the change makes.
    pub revision: u64,
    /// Who made the change.
    pub actor: String,
    pub spec: DeploymentSpec,
}

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunResult {
    pub outcome: HookOutcome,
    pub exit_code: Option<i32>,
    /// The output's tail, or why it did not run.
    pub output: String,
}

impl RunResult {
    fn failed(why: impl Into<String>) -> Self {
        Self {
            outcome: HookOutcome::Failed,
            exit_code: None,
            output: why.into(),
        }
    }
}

// === the pure rules ===

/// Checks a command hook's name: a plain file name, so that it can only name a file
/// directly inside the hooks directory.
pub(crate) fn check_command_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.contains('/') || name.contains('\\') {
        return Err("must be a plain file name, without '/'".into());
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err("must not contain '..'".into());
    }
    if name.starts_with('.') {
        return Err("must not be a hidden file (starting with '.')".into());
    }
    if name.chars().any(char::is_control) || name.len() > 255 {
        return Err("must be at most 255 printable characters".into());
    }
    Ok(())
}

/// The executable `name` stands for in `dir`, after checking that it is a regular,
/// executable file directly inside `dir` once every symlink is resolved.
pub(crate) fn resolve_command(dir: &Path, name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    check_command_name(name)?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("the gateway's hooks directory cannot be read ({e})"))?;
    let path = dir
        .join(name)
        .canonicalize()
        .map_err(|_| "no such file in the gateway's hooks directory".to_string())?;
    if path.parent() != Some(dir.as_path()) {
        return Err("is a symlink to a file outside the gateway's hooks directory".into());
    }
    let meta = std::fs::metadata(&path).map_err(|e| format!("cannot be read ({e})"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable (chmod 755 it in the hooks directory)".into());
    }
    Ok(path)
}

/// Checks a URL hook's URL: `http://` or `https://` with a host.
pub(crate) fn check_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "is not a URL (e.g. https://hooks.example.com/deployed)".to_string())?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(uri)
}

/// The end of `bytes` as text: the last `cap` bytes, from a character boundary on.
pub(crate) fn tail(bytes: &[u8], cap: usize) -> String {
    let start = bytes.len().saturating_sub(cap);
    let text = String::from_utf8_lossy(&bytes[start..]);
    // A cut through a character shows as U+FFFD at the start: drop it.
    text.trim_start_matches('\u{FFFD}').to_string()
}

/// Why a run found no slot.
pub(crate) fn no_slot_reason(wait: Duration, running: usize, slots: u32) -> String {
    format!(
        "no free hook slot within {}: {running} hooks are running on this gateway (--hook-slots {slots})",
        humanize(wait)
    )
}

/// `10s`, `1m30s`, `250ms`.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() != 0 && d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// The JSON a hook receives (see the module's documentation).
pub(crate) fn payload(ctx: &HookContext, phase: HookPhase, status: Option<&str>) -> Value {
    let mut value = json!({
        "phase": phase.as_str(),
        "deployer": {"id": ctx.deployer_id, "name": ctx.deployer_name},
        "deployment": {"id": ctx.deployment_id, "name": ctx.name, "namespace": ctx.namespace},
        "revision": ctx.revision,
        "actor": ctx.actor,
        "spec": serde_json::to_value(&ctx.spec).unwrap_or(Value::Null),
    });
    if let Some(status) = status {
        value["status"] = json!(status);
    }
    value
}

/// The environment of a command hook, besides `PATH`.
fn hook_env(ctx: &HookContext, phase: HookPhase, status: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        ("DS_HOOK_PHASE".into(), phase.as_str().into()),
        ("DS_HOOK_DEPLOYER".into(), ctx.deployer_name.clone()),
        ("DS_HOOK_DEPLOYMENT".into(), ctx.name.clone()),
        ("DS_HOOK_NAMESPACE".into(), ctx.namespace.clone()),
        ("DS_HOOK_REVISION".into(), ctx.revision.to_string()),
        ("DS_HOOK_ACTOR".into(), ctx.actor.clone()),
    ];
    if let Some(status) = status {
        env.push(("DS_HOOK_STATUS".into(), status.into()));
    }
    env
}

/// A pre-hook's refusal of a change, with its output's tail.
pub(crate) fn refusal(hook: &HookRecord, result: &RunResult) -> String {
    let what = format!(
        "pre-deployment hook {} ({})",
        hook.id,
        shown_target(&hook.target)
    );
    let how = match (result.outcome, result.exit_code) {
        (HookOutcome::TimedOut, _) => format!(
            "timed out after {}",
            humanize(Duration::from_millis(hook.timeout_ms))
        ),
        (HookOutcome::NoSlot, _) => "did not run".to_string(),
        (_, Some(code)) if matches!(hook.target, HookTarget::Url(_)) => {
            format!("failed (HTTP {code})")
        }
        (_, Some(code)) => format!("failed (exit {code})"),
        (_, None) => "failed".to_string(),
    };
    let output = tail(result.output.trim_end().as_bytes(), MESSAGE_TAIL);
    if output.is_empty() {
        format!("{what} {how} (no output)")
    } else {
        format!("{what} {how}: {output}")
    }
}

/// The status word of a final phase.
fn status_word(phase: i32) -> Option<&'static str> {
    if phase == Phase::Available as i32 {
        Some("available")
    } else if phase == Phase::Failed as i32 {
        Some("failed")
    } else {
        None
    }
}

/// Keeps the last [`OUTPUT_CAP`] bytes of what is appended.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * OUTPUT_CAP {
            let cut = self.0.len() - OUTPUT_CAP;
            self.0.drain(..cut);
        }
    }
}

// === running ===

impl Hooks {
    pub(crate) fn new(settings: HookSettings) -> Self {
        let permits = usize::try_from(settings.slots.max(1)).unwrap_or(1);
        Self {
            slots: Arc::new(Semaphore::new(permits)),
            settings,
            http: tokio::sync::OnceCell::new(),
        }
    }

    /// Checks a command hook at add time: the gateway has a hooks directory, and `name`
    /// is an executable directly in it. The message names `--command` and the rule.
    pub(crate) fn check_new_command(&self, name: &str) -> Result<(), CommandRefusal> {
        let Some(dir) = &self.settings.dir else {
            return Err(CommandRefusal::NoHooksDir);
        };
        resolve_command(dir, name)
            .map(|_| ())
            .map_err(|rule| CommandRefusal::Rule(format!("command: {name:?} {rule}; --command takes the file name of an executable in the gateway's --hooks-dir")))
    }

    /// Runs `hook` for `ctx` once a slot is free (within the phase's wait).
    async fn run(
        &self,
        metrics: &Metrics,
        hook: &HookRecord,
        ctx: &HookContext,
        status: Option<&str>,
    ) -> RunResult {
        let wait = match hook.phase {
            HookPhase::Pre => self.settings.pre_wait,
            HookPhase::Post => self.settings.post_wait,
        };
        metrics.hooks_waiting.inc();
        let permit = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        metrics.hooks_waiting.dec();
        let Ok(Ok(_permit)) = permit else {
            let free = self.slots.available_permits();
            let slots = self.settings.slots;
            let running = usize::try_from(slots).unwrap_or(0).saturating_sub(free);
            return RunResult {
                outcome: HookOutcome::NoSlot,
                exit_code: None,
                output: no_slot_reason(wait, running, slots),
            };
        };
        metrics.hooks_running.inc();
        let timeout = Duration::from_millis(hook.timeout_ms);
        let body = payload(ctx, hook.phase, status);
        let result = match &hook.target {
            HookTarget::Command(name) => {
                self.run_command(name, timeout, &body, &hook_env(ctx, hook.phase, status))
                    .await
            }
            HookTarget::Url(url) => self.post(url, timeout, &body).await,
        };
        metrics.hooks_running.dec();
        result
    }

    async fn run_command(
        &self,
        name: &str,
        timeout: Duration,
        body: &Value,
        env: &[(String, String)],
    ) -> RunResult {
        let Some(dir) = &self.settings.dir else {
            return RunResult::failed(
                "refused: the gateway runs without --hooks-dir now; command hooks are off",
            );
        };
        // Checked again: the directory may have changed since the hook was added.
        let path = match resolve_command(dir, name) {
            Ok(path) => path,
            Err(rule) => return RunResult::failed(format!("refused: {name:?} {rule}")),
        };
        let mut command = tokio::process::Command::new(&path);
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(path.parent().unwrap_or(dir))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so that what it starts dies with it at its timeout.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return RunResult::failed(format!("could not be started: {e}")),
        };
        let mut group = ProcessGroup::of(&child);
        let input = body.to_string().into_bytes();
        let stdin = child.stdin.take();
        let writer = tokio::spawn(async move {
            if let Some(mut stdin) = stdin {
                // A hook that does not read its input closes the pipe: not an error.
                let _ = stdin.write_all(&input).await;
            }
        });
        let output = Arc::new(parking_lot::Mutex::new(Tail::default()));
        let readers = [
            child.stdout.take().map(|o| read_into(o, output.clone())),
            child.stderr.take().map(|e| read_into(e, output.clone())),
        ];
        let waited = tokio::time::timeout(timeout, child.wait()).await;
        if matches!(waited, Ok(Ok(_))) {
            // Waited for: its group ID may be reused from now on. What it left behind is
            // its author's to manage (the output is read only OUTPUT_DRAIN longer).
            group.disarm();
        }
        let (outcome, exit_code) = match waited {
            Ok(Ok(status)) => match status.code() {
                Some(0) => (HookOutcome::Ok, Some(0)),
                Some(code) => (HookOutcome::Failed, Some(code)),
                // Ended by a signal.
                None => (HookOutcome::Failed, None),
            },
            Ok(Err(e)) => {
                group.kill();
                let _ = child.kill().await;
                return RunResult::failed(format!("waiting for it failed: {e}"));
            }
            Err(_) => {
                group.kill();
                let _ = child.kill().await;
                (HookOutcome::TimedOut, None)
            }
        };
        writer.abort();
        for mut reader in readers.into_iter().flatten() {
            if tokio::time::timeout(OUTPUT_DRAIN, &mut reader)
                .await
                .is_err()
            {
                reader.abort();
                tracing::debug!(hook = name, "a hook's output stayed open after it exited");
            }
        }
        let text = tail(&output.lock().0, OUTPUT_CAP);
        RunResult {
            outcome,
            exit_code,
            output: text,
        }
    }

    async fn post(&self, url: &str, timeout: Duration, body: &Value) -> RunResult {
        let uri = match check_url(url) {
            Ok(uri) => uri,
            Err(rule) => return RunResult::failed(format!("refused: the URL {rule}")),
        };
        let client = match self.http.get_or_init(|| async { http_client() }).await {
            Ok(client) => client.clone(),
            Err(e) => return RunResult::failed(e.clone()),
        };
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("ds-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body.to_string())));
        let request = match request {
            Ok(r) => r,
            Err(e) => return RunResult::failed(format!("bad request: {e}")),
        };
        let exchange = async {
            let response = client.request(request).await.map_err(|e| {
                // The client's error chain says why (refused, DNS, TLS).
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                why
            })?;
            let code = response.status().as_u16();
            let mut body = response.into_body();
            let mut kept = Tail::default();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            kept.push(data);
                        }
                    }
                    Err(_) => break,
                }
            }
            Ok::<_, String>((code, kept))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => RunResult {
                outcome: HookOutcome::TimedOut,
                exit_code: None,
                output: String::new(),
            },
            Ok(Err(why)) => RunResult::failed(format!("the request failed: {why}")),
            Ok(Ok((code, kept))) => RunResult {
                outcome: if (200..300).contains(&code) {
                    HookOutcome::Ok
                } else {
                    HookOutcome::Failed
                },
                exit_code: Some(i32::from(code)),
                output: tail(&kept.0, OUTPUT_CAP),
            },
        }
    }

    /// Runs the deployer's pre-hooks for a change, in order, recording each run; the
    /// first that fails refuses the change (its message, for FAILED_PRECONDITION).
    pub(crate) async fn run_pre(
        &self,
        store: &dyn Store,
        metrics: &Metrics,
        by: &ChangeBy,
        ctx: &HookContext,
    ) -> Result<(), PreHookError> {
        let hooks = store.list_hooks(Some(&ctx.deployer_id)).await?;
        for hook in hooks.iter().filter(|h| h.phase == HookPhase::Pre) {
            let started = Utc::now();
            let result = self.run(metrics, hook, ctx, None).await;
            record(store, by, hook, ctx, started, &result).await;
            tracing::info!(hook = hook.id, deployer = %ctx.deployer_id, deployment = %ctx.name, outcome = result.outcome.as_str(), exit_code = ?result.exit_code, "pre-deployment hook ran");
            if result.outcome != HookOutcome::Ok {
                return Err(PreHookError::Refused(refusal(hook, &result)));
            }
        }
        Ok(())
    }

    /// After a change committed: waits (in the background, until shutdown) for the agent
    /// to report `changed`'s revision Available or Failed, then runs the deployer's
    /// post-hooks with that status. A newer change of the deployment, or its removal,
    /// ends the wait without running them: the newer change has its own.
    pub(crate) fn after_change(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        by: ChangeBy,
        changed: DeploymentRecord,
    ) {
        let hooks = self.clone();
        tokio::spawn(async move {
            let post: Vec<HookRecord> = match store.list_hooks(Some(&changed.deployer_id)).await {
                Ok(all) => all
                    .into_iter()
                    .filter(|h| h.phase == HookPhase::Post)
                    .collect(),
                Err(error) => {
                    tracing::error!(%error, deployment = %changed.id, "reading the post-deployment hooks failed");
                    return;
                }
            };
            if post.is_empty() {
                return;
            }
            let status = tokio::select! {
                () = shutdown.cancelled() => return,
                s = wait_for_outcome(store.as_ref(), &changed.id, changed.revision, hooks.settings.post_status_wait) => s,
            };
            let status = match status {
                Ok(Some(status)) => Ok(status),
                Ok(None) => {
                    tracing::debug!(deployment = %changed.id, "a newer change supersedes the post-deployment hooks' wait");
                    return;
                }
                Err(why) => Err(why),
            };
            let deployer_name = store
                .resolve_deployer(&changed.deployer_id)
                .await
                .map(|(_, name)| name)
                .unwrap_or_default();
            let revision = match store.list_revisions(&changed.id).await {
                Ok(revisions) => revisions
                    .iter()
                    .find(|r| r.deployer_revision == changed.revision)
                    .map_or(0, |r| r.number),
                Err(_) => 0,
            };
            let ctx = HookContext {
                deployer_id: changed.deployer_id.clone(),
                deployer_name,
                deployment_id: changed.id.clone(),
                name: changed.name.clone(),
                namespace: changed.namespace.clone(),
                revision,
                actor: by.actor.clone(),
                spec: changed.spec.clone(),
            };
            // The gateway runs post-hooks on its own, for the change's author.
            let gateway = ChangeBy::new(GATEWAY_ACTOR, by.request_id.clone());
            let status = match status {
                Ok(status) => status,
                Err(why) => {
                    // Recorded, so that describe and the audit show why they did not run.
                    let reason = match why {
                        NoOutcome::Expired(wait) => format!(
                            "not run: the agent reported no Available or Failed status for revision {} within {} (--hook-post-status-wait)",
                            ctx.revision,
                            humanize(wait)
                        ),
                        NoOutcome::Error(e) => {
                            format!("not run: reading the deployment's status failed: {e}")
                        }
                    };
                    tracing::warn!(deployment = %ctx.deployment_id, revision = ctx.revision, %reason, "post-deployment hooks not run");
                    for hook in &post {
                        let now = Utc::now();
                        record(
                            store.as_ref(),
                            &gateway,
                            hook,
                            &ctx,
                            now,
                            &RunResult::failed(reason.clone()),
                        )
                        .await;
                    }
                    return;
                }
            };
            for hook in &post {
                let started = Utc::now();
                let result = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = hooks.run(&metrics, hook, &ctx, Some(status)) => r,
                };
                record(store.as_ref(), &gateway, hook, &ctx, started, &result).await;
                tracing::info!(hook = hook.id, deployment = %ctx.deployment_id, status, outcome = result.outcome.as_str(), exit_code = ?result.exit_code, "post-deployment hook ran");
            }
        });
    }
}

// === the calls of control_service ===

/// Runs the pre-hooks of a create on `deployer` (revision 1, no deployment ID yet).
///
/// # Errors
/// FAILED_PRECONDITION with the failing hook's message; nothing is stored then.
pub(crate) async fn before_create(
    shared: &Shared,
    by: &ChangeBy,
    deployer: &DeployerRecord,
    name: &str,
    namespace: &str,
    spec: &DeploymentSpec,
) -> Result<(), Status> {
    if !has_pre_hooks(shared, &deployer.id).await? {
        return Ok(());
    }
    let ctx = HookContext {
        deployer_id: deployer.id.clone(),
        deployer_name: deployer.name.clone(),
        deployment_id: String::new(),
        name: name.to_string(),
        namespace: namespace.to_string(),
        revision: 1,
        actor: by.actor.clone(),
        spec: spec.clone(),
    };
    pre(shared, by, &ctx).await
}

/// Runs the pre-hooks of a change of `record` to `spec` (its next revision).
///
/// # Errors
/// FAILED_PRECONDITION with the failing hook's message; nothing is stored then.
pub(crate) async fn before_update(
    shared: &Shared,
    by: &ChangeBy,
    record: &DeploymentRecord,
    spec: &DeploymentSpec,
) -> Result<(), Status> {
    if !has_pre_hooks(shared, &record.deployer_id).await? {
        return Ok(());
    }
    let store = shared.store.as_ref();
    let (_, deployer_name) = store
        .resolve_deployer(&record.deployer_id)
        .await
        .map_err(store_status)?;
    let last = store
        .list_revisions(&record.id)
        .await
        .map_err(store_status)?
        .last()
        .map_or(0, |r| r.number);
    let ctx = HookContext {
        deployer_id: record.deployer_id.clone(),
        deployer_name,
        deployment_id: record.id.clone(),
        name: record.name.clone(),
        namespace: record.namespace.clone(),
        revision: last + 1,
        actor: by.actor.clone(),
        spec: spec.clone(),
    };
    pre(shared, by, &ctx).await
}

/// After a create, update or rollback committed: its post-hooks, in the background.
pub(crate) fn after_commit(shared: &Shared, by: &ChangeBy, changed: &DeploymentRecord) {
    shared.hooks.after_change(
        shared.store.clone(),
        shared.metrics.clone(),
        shared.shutdown.clone(),
        by.clone(),
        changed.clone(),
    );
}

async fn has_pre_hooks(shared: &Shared, deployer_id: &str) -> Result<bool, Status> {
    let hooks = shared
        .store
        .list_hooks(Some(deployer_id))
        .await
        .map_err(store_status)?;
    Ok(hooks.iter().any(|h| h.phase == HookPhase::Pre))
}

async fn pre(shared: &Shared, by: &ChangeBy, ctx: &HookContext) -> Result<(), Status> {
    match shared
        .hooks
        .run_pre(shared.store.as_ref(), &shared.metrics, by, ctx)
        .await
    {
        Ok(()) => Ok(()),
        Err(PreHookError::Refused(message)) => Err(Status::failed_precondition(message)),
        Err(PreHookError::Store(e)) => Err(store_status(e)),
    }
}

/// The hook an AddHook request describes, validated: its phase, a command the gateway's
/// hooks directory has (or an http(s) URL), a timeout within `--hook-max-timeout`.
///
/// # Errors
/// INVALID_ARGUMENT naming the flag and the rule; FAILED_PRECONDITION for a command hook
/// on a gateway without `--hooks-dir`.
pub(crate) fn new_hook(hooks: &Hooks, req: &proto::AddHookRequest) -> Result<NewHook, Status> {
    let phase = match proto::HookPhase::try_from(req.phase) {
        Ok(proto::HookPhase::Pre) => HookPhase::Pre,
        Ok(proto::HookPhase::Post) => HookPhase::Post,
        _ => {
            return Err(Status::invalid_argument(
                "phase: required; --phase takes pre or post",
            ));
        }
    };
    let target = match &req.target {
        Some(proto::add_hook_request::Target::Command(name)) => {
            match hooks.check_new_command(name) {
                Ok(()) => HookTarget::Command(name.clone()),
                Err(CommandRefusal::NoHooksDir) => {
                    return Err(Status::failed_precondition(
                        "command: command hooks are off on this gateway (it was started without --hooks-dir); use --url, or have whoever runs the gateway set --hooks-dir",
                    ));
                }
                Err(CommandRefusal::Rule(message)) => {
                    return Err(Status::invalid_argument(message));
                }
            }
        }
        Some(proto::add_hook_request::Target::Url(url)) => {
            // The URL itself is not repeated: a webhook URL often holds its secret.
            check_url(url).map_err(|rule| {
                Status::invalid_argument(format!(
                    "url: the URL {rule}; --url takes an http:// or https:// URL"
                ))
            })?;
            HookTarget::Url(url.clone())
        }
        None => {
            return Err(Status::invalid_argument(
                "target: give --command NAME (an executable in the gateway's --hooks-dir) or --url URL",
            ));
        }
    };
    let timeout = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    let max = hooks.settings.max_timeout;
    if timeout > max {
        return Err(Status::invalid_argument(format!(
            "timeout_ms: {} is longer than this gateway allows; --timeout takes at most {} (--hook-max-timeout)",
            humanize(timeout),
            humanize(max)
        )));
    }
    Ok(NewHook {
        phase,
        target,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    })
}

/// A URL as it may be shown: scheme and host only, for its path or query may hold the
/// webhook's secret (Slack, Teams).
pub(crate) fn shown_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            let scheme = uri.scheme_str().unwrap_or("http");
            let authority = uri.authority().map_or("", |a| a.as_str());
            // userinfo (user:password@) is a secret too.
            let host = authority.rsplit('@').next().unwrap_or_default();
            let rest = if uri.path().len() > 1 || uri.query().is_some() {
                "/…"
            } else {
                ""
            };
            format!("{scheme}://{host}{rest}")
        }
        Err(_) => "(invalid URL)".to_string(),
    }
}

/// What a hook runs, as it may be shown.
pub(crate) fn shown_target(target: &HookTarget) -> String {
    match target {
        HookTarget::Command(name) => name.clone(),
        HookTarget::Url(url) => shown_url(url),
    }
}

/// A hook for the CLI.
pub(crate) fn hook_to_proto(h: &HookRecord, deployer_name: &str) -> proto::Hook {
    proto::Hook {
        id: h.id,
        deployer_id: h.deployer_id.clone(),
        deployer_name: deployer_name.to_string(),
        phase: phase_to_proto(h.phase) as i32,
        target: Some(match &h.target {
            HookTarget::Command(c) => proto::hook::Target::Command(c.clone()),
            HookTarget::Url(u) => proto::hook::Target::Url(shown_url(u)),
        }),
        timeout_ms: h.timeout_ms,
        created_at: rfc3339(h.created_at),
        created_by: h.created_by.clone(),
    }
}

/// A hook run for the CLI.
pub(crate) fn run_to_proto(r: &HookRunRecord) -> proto::HookRun {
    proto::HookRun {
        id: r.id,
        hook_id: r.hook_id,
        phase: phase_to_proto(r.phase) as i32,
        target: r.target.clone(),
        revision: r.revision,
        outcome: r.outcome.as_str().to_string(),
        exit_code: r.exit_code,
        output_tail: r.output_tail.clone(),
        started_at: rfc3339(r.started_at),
        finished_at: rfc3339(r.finished_at),
        actor: r.actor.clone(),
    }
}

fn phase_to_proto(phase: HookPhase) -> proto::HookPhase {
    match phase {
        HookPhase::Pre => proto::HookPhase::Pre,
        HookPhase::Post => proto::HookPhase::Post,
    }
}

/// The actor of what the gateway does on its own (post-hook runs).
pub(crate) const GATEWAY_ACTOR: &str = "gateway";

/// Waits until the deployment's status reports deployer revision `revision` Available
/// or Failed (its word), bounded by `wait` (`--hook-post-status-wait`). `Ok(None)` when
/// the deployment changed again or was deleted meanwhile.
async fn wait_for_outcome(
    store: &dyn Store,
    deployment_id: &str,
    revision: u64,
    wait: Duration,
) -> Result<Option<&'static str>, NoOutcome> {
    // Subscribed before the first look, so that no report between the two is missed.
    let mut touched = store.hub().subscribe_touched();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match store.get_deployment(deployment_id).await {
            Ok(d) if d.revision != revision => return Ok(None),
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(NoOutcome::Error(e.to_string())),
        }
        let status = store
            .get_status(deployment_id)
            .await
            .map_err(|e| NoOutcome::Error(e.to_string()))?;
        if let Some(s) = status
            && s.applied_revision == revision
            && let Some(word) = status_word(s.phase)
        {
            return Ok(Some(word));
        }
        loop {
            match tokio::time::timeout_at(deadline, touched.recv()).await {
                Err(_) => {
                    return Err(NoOutcome::Expired(wait));
                }
                Ok(Ok(id)) if id != deployment_id => continue,
                Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => break,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(NoOutcome::Error("the store closed".into()));
                }
            }
        }
    }
}

/// The process group of a command hook (it leads it: `process_group(0)`). Killed at the
/// hook's timeout, and when the run is dropped before the hook was waited for (the
/// gateway shutting down), so that nothing a hook started outlives it.
struct ProcessGroup(Option<rustix::process::Pid>);

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> Self {
        Self(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
        )
    }

    /// Kills the group once; after that (or [`Self::disarm`]) the group ID is not used
    /// again, as it may be reused once the hook was waited for.
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // The group may be gone already (ESRCH): nothing left to kill.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a post-hook's wait for the agent's report ended without one.
#[derive(Debug)]
enum NoOutcome {
    /// `--hook-post-status-wait` passed.
    Expired(Duration),
    Error(String),
}

/// Records a run and its audit row; a failure to record is logged, the run's effect
/// (a refusal) stays.
async fn record(
    store: &dyn Store,
    by: &ChangeBy,
    hook: &HookRecord,
    ctx: &HookContext,
    started: chrono::DateTime<Utc>,
    result: &RunResult,
) {
    let run = HookRunRecord {
        id: 0,
        hook_id: hook.id,
        deployer_id: ctx.deployer_id.clone(),
        deployment_id: ctx.deployment_id.clone(),
        deployment: format!("{}/{}", ctx.namespace, ctx.name),
        revision: ctx.revision,
        phase: hook.phase,
        target: shown_target(&hook.target),
        started_at: started,
        finished_at: Utc::now(),
        outcome: result.outcome,
        exit_code: result.exit_code,
        output_tail: result.output.clone(),
        actor: ctx.actor.clone(),
    };
    if let Err(error) = store.record_hook_run(by, &run).await {
        tracing::error!(%error, hook = hook.id, "recording a hook run failed");
    }
}

/// Reads a pipe into `out` until it closes.
fn read_into(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    out: Arc<parking_lot::Mutex<Tail>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.lock().push(&buf[..n]),
            }
        }
    })
}

/// The HTTPS (and HTTP) client of URL hooks: the system's roots, the ring provider.
fn http_client() -> Result<HttpClient, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("no TLS roots for HTTPS hooks: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// Why a command hook cannot be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommandRefusal {
    /// The gateway has no `--hooks-dir`.
    NoHooksDir,
    /// The name breaks a rule (the message names `--command` and the rule).
    Rule(String),
}

/// Why pre-hooks refused a change.
#[derive(Debug)]
pub(crate) enum PreHookError {
    /// A hook failed: the message for the caller.
    Refused(String),
    /// Reading the hooks failed.
    Store(StoreError),
}

impl From<StoreError> for PreHookError {
    fn from(e: StoreError) -> Self {
        PreHookError::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn command_names_are_plain_file_names() {
        assert_eq!(check_command_name("notify.sh"), Ok(()));
        for bad in ["", "a/b", "/bin/sh", "..", ".", "a..b", ".hidden", "x\ny"] {
            assert!(check_command_name(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check_command_name("../x").unwrap_err().contains('/'));
        assert!(check_command_name(".env").unwrap_err().contains("hidden"));
    }

    #[test]
    fn only_executables_directly_inside_the_directory_resolve() {
        let root = tempfile::tempdir().unwrap();
        let hooks = root.path().join("hooks");
        std::fs::create_dir(&hooks).unwrap();
        script(&hooks, "ok.sh", "exit 0", 0o755);
        script(&hooks, "plain.txt", "exit 0", 0o644);
        let outside = script(root.path(), "outside.sh", "exit 0", 0o755);
        std::os::unix::fs::symlink(&outside, hooks.join("escape")).unwrap();
        std::os::unix::fs::symlink(hooks.join("ok.sh"), hooks.join("alias")).unwrap();
        std::fs::create_dir(hooks.join("sub")).unwrap();

        let ok = resolve_command(&hooks, "ok.sh").unwrap();
        assert_eq!(ok, hooks.canonicalize().unwrap().join("ok.sh"));
        // A link to a file inside the directory is that file.
        assert_eq!(resolve_command(&hooks, "alias").unwrap(), ok);
        let escape = resolve_command(&hooks, "escape").unwrap_err();
        assert!(escape.contains("outside"), "{escape}");
        let plain = resolve_command(&hooks, "plain.txt").unwrap_err();
        assert!(plain.contains("not executable"), "{plain}");
        assert!(
            resolve_command(&hooks, "sub")
                .unwrap_err()
                .contains("regular")
        );
        assert!(
            resolve_command(&hooks, "missing")
                .unwrap_err()
                .contains("no such file")
        );
        assert!(resolve_command(&hooks, "../outside.sh").is_err());
    }

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        assert!(check_url("https://hooks.example.com/x").is_ok());
        assert!(check_url("http://127.0.0.1:9/x").is_ok());
        assert!(
            check_url("ftp://example.com/")
                .unwrap_err()
                .contains("http")
        );
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn urls_are_shown_without_their_secret_parts() {
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            shown_url("http://u:pw@127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            shown_url("https://h.example.com?token=s"),
            "https://h.example.com/…"
        );
    }

    #[test]
    fn the_tail_keeps_the_end_on_a_character_boundary() {
        assert_eq!(tail(b"hello", 10), "hello");
        assert_eq!(tail(b"hello world", 5), "world");
        // "é" is two bytes: a cut through it does not show half of it.
        assert_eq!(tail("aéb".as_bytes(), 2), "b");
        let mut t = Tail::default();
        for _ in 0..10 {
            t.push(&[b'x'; OUTPUT_CAP]);
        }
        t.push(b"END");
        assert!(t.0.len() <= 2 * OUTPUT_CAP);
        assert!(tail(&t.0, OUTPUT_CAP).ends_with("END"));
        assert_eq!(tail(&t.0, OUTPUT_CAP).len(), OUTPUT_CAP);
    }

    #[test]
    fn the_no_slot_reason_says_how_long_and_how_many() {
        assert_eq!(
            no_slot_reason(Duration::from_secs(10), 3, 3),
            "no free hook slot within 10s: 3 hooks are running on this gateway (--hook-slots 3)"
        );
        assert_eq!(humanize(Duration::from_secs(90)), "1m30s");
        assert_eq!(humanize(Duration::from_millis(250)), "250ms");
    }

    fn ctx() -> HookContext {
        HookContext {
            deployer_id: "d-1".into(),
            deployer_name: "prod".into(),
            deployment_id: String::new(),
            name: "iris".into(),
            namespace: "default".into(),
            revision: 1,
            actor: "alice (key 0123456789abcdef)".into(),
            spec: DeploymentSpec::test("iris"),
        }
    }

    #[test]
    fn the_payload_has_the_documented_fields() {
        let pre = payload(&ctx(), HookPhase::Pre, None);
        assert_eq!(pre["phase"], "pre");
        assert_eq!(pre["deployer"]["name"], "prod");
        assert_eq!(pre["deployment"]["namespace"], "default");
        assert_eq!(pre["revision"], 1);
        assert!(pre["spec"].is_object());
        assert!(pre.get("status").is_none(), "a pre-hook has no status");
        let post = payload(&ctx(), HookPhase::Post, Some("available"));
        assert_eq!(post["status"], "available");
    }

    fn hooks_in(dir: &Path) -> Hooks {
        Hooks::new(HookSettings {
            dir: Some(dir.to_path_buf()),
            slots: 1,
            pre_wait: Duration::from_secs(30),
            post_wait: Duration::from_secs(30),
            post_status_wait: Duration::from_secs(30),
            max_timeout: Duration::from_secs(600),
        })
    }

    #[tokio::test]
    async fn a_command_gets_its_input_a_clean_environment_and_its_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "show.sh",
            "env | sort; cat; echo; echo oops >&2; exit 3",
            0o755,
        );
        let hooks = hooks_in(dir.path());
        let body = payload(&ctx(), HookPhase::Pre, None);
        let env = hook_env(&ctx(), HookPhase::Pre, None);
        let result = hooks
            .run_command("show.sh", Duration::from_secs(30), &body, &env)
            .await;
        assert_eq!(result.outcome, HookOutcome::Failed);
        assert_eq!(result.exit_code, Some(3));
        assert!(
            result.output.contains("DS_HOOK_DEPLOYMENT=iris"),
            "{}",
            result.output
        );
        assert!(result.output.contains("PATH=/usr/bin:/bin"));
        assert!(
            result.output.contains("\"phase\":\"pre\""),
            "{}",
            result.output
        );
        assert!(result.output.contains("oops"));
        // Nothing of the gateway's environment (HOME, CARGO_*) reaches the hook.
        assert!(!result.output.contains("HOME="), "{}", result.output);
        assert!(!result.output.contains("CARGO"), "{}", result.output);
    }

    #[tokio::test]
    async fn a_command_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("after-sleep");
        script(
            dir.path(),
            "slow.sh",
            &format!("echo started; sleep 30; touch {}", marker.display()),
            0o755,
        );
        let hooks = hooks_in(dir.path());
        let body = payload(&ctx(), HookPhase::Pre, None);
        let result = hooks
            .run_command("slow.sh", Duration::from_millis(300), &body, &[])
            .await;
        assert_eq!(result.outcome, HookOutcome::TimedOut);
        assert!(result.output.contains("started"), "{}", result.output);
        assert!(!marker.exists());
        let refused = refusal(
            &HookRecord {
                id: 7,
                deployer_id: "d".into(),
                phase: HookPhase::Pre,
                target: HookTarget::Command("slow.sh".into()),
                timeout_ms: 300,
                created_at: Utc::now(),
                created_by: String::new(),
            },
            &result,
        );
        assert_eq!(
            refused,
            "pre-deployment hook 7 (slow.sh) timed out after 300ms: started"
        );
    }

    /// Whether a process is gone: no /proc entry, or a zombie not reaped yet (in a
    /// container, PID 1 may not reap orphans).
    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/status")) {
            Err(_) => true,
            Ok(status) => status
                .lines()
                .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X'))),
        }
    }

    #[tokio::test]
    async fn what_a_command_started_dies_with_it_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        script(
            dir.path(),
            "spawner.sh",
            &format!(
                "sleep 300 & echo $! > {}; echo started; sleep 300",
                pid_file.display()
            ),
            0o755,
        );
        let hooks = hooks_in(dir.path());
        let body = payload(&ctx(), HookPhase::Pre, None);
        let result = hooks
            .run_command("spawner.sh", Duration::from_secs(3), &body, &[])
            .await;
        assert_eq!(result.outcome, HookOutcome::TimedOut);
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.trim().to_string();
        assert!(pid.parse::<u32>().is_ok(), "{pid:?}");
        // Polled, not timed: the kill is sent, its delivery is the kernel's.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !gone(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the hook's child {pid} outlived the hook"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
