//! Answers the gateway's questions about the cluster (`ds deployment logs|describe`) over
//! the Inspect stream: the agent dials out, so it keeps this stream open next to its Watch
//! and the gateway asks down it.
//!
//! Reads only, of one deployment's objects at a time, selected by their deployment-ID and
//! managed-by labels (and the owner label once the deployer is known), so a question can
//! never reach objects this agent does not own. Every replica answers, leader or not.

use super::builders::{DEPLOYMENT_ID_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_LABEL};
use super::sync::{self, Client, DesiredState};
use ds_core::proto::{
    ClusterDescription, ClusterEvent, DescribeQuery, InspectReply, InspectRequest, LogLine,
    LogLines, LogsQuery, PodDescription, inspect_reply, inspect_request,
};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Replies buffered before the questions' tasks wait for the gateway.
const REPLY_BUFFER: usize = 64;
/// Most lines in one reply.
const LINES_PER_REPLY: usize = 200;
/// Most events a description carries (the latest).
const MAX_EVENTS: usize = 100;

/// Keeps an Inspect stream open (reconnecting like the Watch) and answers what comes down
/// it until `cancel`. The desired state names the deployer once a snapshot came.
pub async fn inspect_loop(
    client: Client,
    kube: kube::Client,
    desired: watch::Receiver<DesiredState>,
    cancel: CancellationToken,
) {
    let mut delays = sync::backoff();
    while !cancel.is_cancelled() {
        let (tx, rx) = mpsc::channel::<InspectReply>(REPLY_BUFFER);
        let mut grpc = client.clone();
        let opened = tokio::select! {
            r = grpc.inspect(ReceiverStream::new(rx)) => r,
            () = cancel.cancelled() => return,
        };
        let delay = match opened {
            Ok(response) => {
                delays = sync::backoff();
                let connection = cancel.child_token();
                let refused = serve(response.into_inner(), &tx, &kube, &desired, &connection).await;
                // Ends every question of this connection.
                connection.cancel();
                if refused {
                    // The token was revoked or rotated out meanwhile: as at open.
                    sync::REFUSED_BACKOFF
                } else {
                    delays.next().unwrap_or(sync::MAX_BACKOFF)
                }
            }
            // The watch loop says what is wrong with a refused token; just wait as long.
            Err(status) if status.code() == tonic::Code::Unauthenticated => sync::REFUSED_BACKOFF,
            Err(status) => {
                debug!(code = ?status.code(), message = %status.message(), "cannot open the inspect stream");
                delays.next().unwrap_or(sync::MAX_BACKOFF)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Answers the questions of one stream until it ends; true when the gateway ended it
/// because the token is no longer valid.
async fn serve(
    mut questions: tonic::Streaming<InspectRequest>,
    replies: &mpsc::Sender<InspectReply>,
    kube: &kube::Client,
    desired: &watch::Receiver<DesiredState>,
    connection: &CancellationToken,
) -> bool {
    let mut running: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        let question = tokio::select! {
            q = questions.message() => q,
            () = connection.cancelled() => return false,
        };
        let request = match question {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(status) => {
                debug!(code = ?status.code(), "inspect stream ended");
                return status.code() == tonic::Code::Unauthenticated;
            }
        };
        running.retain(|_, t| !t.is_cancelled());
        let id = request.request_id;
        let owner = desired.borrow().deployer_id.clone();
        match request.query {
            Some(inspect_request::Query::Cancel(_)) => {
                if let Some(t) = running.remove(&id) {
                    t.cancel();
                }
            }
            Some(inspect_request::Query::Logs(q)) => {
                let done = connection.child_token();
                running.insert(id.clone(), done.clone());
                let (kube, replies) = (kube.clone(), replies.clone());
                tokio::spawn(async move {
                    let answer = tokio::select! {
                        r = logs(&kube, owner.as_deref(), &q, &id, &replies) => r,
                        () = done.cancelled() => return,
                    };
                    let last = match answer {
                        Ok(()) => inspect_reply::Answer::End(true),
                        Err(e) => inspect_reply::Answer::Error(e),
                    };
                    done.cancel();
                    let _ = replies.send(reply(&id, last)).await;
                });
            }
            Some(inspect_request::Query::Describe(q)) => {
                let (kube, replies) = (kube.clone(), replies.clone());
                tokio::spawn(async move {
                    let answer = match describe(&kube, owner.as_deref(), &q).await {
                        Ok(d) => inspect_reply::Answer::Description(d),
                        Err(e) => inspect_reply::Answer::Error(e),
                    };
                    let _ = replies.send(reply(&id, answer)).await;
                });
            }
            None => {}
        }
    }
}

fn reply(request_id: &str, answer: inspect_reply::Answer) -> InspectReply {
    InspectReply {
        request_id: request_id.to_string(),
        answer: Some(answer),
    }
}

/// The label selector of one deployment's pods.
fn pod_selector(owner: Option<&str>, deployment_id: &str) -> String {
    let mut s =
        format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{DEPLOYMENT_ID_LABEL}={deployment_id}");
    if let Some(owner) = owner {
        s.push_str(&format!(",{OWNER_LABEL}={owner}"));
    }
    s
}

/// One line of error for the CLI: the API server's message, without the client's framing.
fn kube_error(what: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{what}: {} ({})", status.message, status.reason),
        other => format!("{what}: {other}"),
    }
}

// === logs ===

/// Streams the lines of the deployment's pods: each pod in turn, or with `follow` every
/// pod at once, including the pods that start later (a rollout), until cancelled.
async fn logs(
    kube: &kube::Client,
    owner: Option<&str>,
    q: &LogsQuery,
    request_id: &str,
    replies: &mpsc::Sender<InspectReply>,
) -> Result<(), String> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &q.namespace);
    let selector = pod_selector(owner, &q.deployment_id);
    let (lines_tx, lines_rx) = mpsc::channel::<LogLine>(LINES_PER_REPLY);
    let forward = forward_lines(lines_rx, request_id, replies);
    let read = async move {
        if q.follow {
            follow_pods(&pods, &selector, q, &lines_tx).await
        } else {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| kube_error("cannot list the deployment's pods", &e))?;
            let mut names: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .filter(|n| q.pod.is_empty() || *n == q.pod)
                .collect();
            names.sort();
            if names.is_empty() && !q.pod.is_empty() {
                return Err(format!("pod {} is not one of the deployment's pods", q.pod));
            }
            for name in names {
                pod_lines(&pods, &name, q, false, &lines_tx).await?;
            }
            Ok(())
        }
    };
    // Reading ends first (dropping its sender), then the forwarder drains what is left.
    let (read, ()) = tokio::join!(read, forward);
    read
}

/// Follows every pod of the selector that has started, as it starts.
async fn follow_pods(
    pods: &Api<Pod>,
    selector: &str,
    q: &LogsQuery,
    lines: &mpsc::Sender<LogLine>,
) -> Result<(), String> {
    let mut events = watcher(pods.clone(), watcher::Config::default().labels(selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut followed: HashSet<String> = HashSet::new();
    let mut streams = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            pod = events.try_next() => match pod {
                Ok(Some(pod)) => {
                    let Some(name) = pod.metadata.name.clone() else { continue };
                    if (!q.pod.is_empty() && name != q.pod)
                        || followed.contains(&name)
                        || !started(&pod, &q.container)
                    {
                        continue;
                    }
                    followed.insert(name.clone());
                    let (pods, q, lines) = (pods.clone(), q.clone(), lines.clone());
                    streams.spawn(async move {
                        if let Err(e) = pod_lines(&pods, &name, &q, true, &lines).await {
                            debug!(pod = %name, error = %e, "log stream ended");
                        }
                    });
                }
                Ok(None) => return Ok(()),
                Err(e) => warn!(error = %e, "watching the deployment's pods for logs"),
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            () = lines.closed() => return Ok(()),
        }
    }
}

/// Whether `container` of `pod` has started, so that it has a log to read.
fn started(pod: &Pod, container: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.name == container)
        .any(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                || c.restart_count > 0
        })
}

/// Reads one pod's lines into `lines`.
async fn pod_lines(
    pods: &Api<Pod>,
    pod: &str,
    q: &LogsQuery,
    follow: bool,
    lines: &mpsc::Sender<LogLine>,
) -> Result<(), String> {
    let params = LogParams {
        container: Some(q.container.clone()),
        follow,
        since_seconds: q.since_seconds,
        tail_lines: q.tail_lines,
        ..LogParams::default()
    };
    let reader = pods
        .log_stream(pod, &params)
        .await
        .map_err(|e| kube_error(&format!("cannot read the log of pod {pod}"), &e))?;
    let mut read = reader.lines();
    while let Some(line) = read.next().await {
        let line = line.map_err(|e| format!("reading the log of pod {pod}: {e}"))?;
        let sent = lines
            .send(LogLine {
                pod: pod.to_string(),
                container: q.container.clone(),
                line,
            })
            .await;
        if sent.is_err() {
            break;
        }
    }
    Ok(())
}

/// Sends the lines in batches: what has arrived since the last reply, at most
/// [`LINES_PER_REPLY`] at once.
async fn forward_lines(
    mut lines: mpsc::Receiver<LogLine>,
    request_id: &str,
    replies: &mpsc::Sender<InspectReply>,
) {
    let mut batch = Vec::with_capacity(LINES_PER_REPLY);
    while lines.recv_many(&mut batch, LINES_PER_REPLY).await > 0 {
        let answer = inspect_reply::Answer::Lines(LogLines {
            lines: std::mem::take(&mut batch),
        });
        if replies.send(reply(request_id, answer)).await.is_err() {
            return;
        }
    }
}

// === describe ===

/// The deployment's pods and the events of its objects.
async fn describe(
    kube: &kube::Client,
    owner: Option<&str>,
    q: &DescribeQuery,
) -> Result<ClusterDescription, String> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &q.namespace);
    let selector = pod_selector(owner, &q.deployment_id);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| kube_error("cannot list the deployment's pods", &e))?;
    // The objects whose events belong to this deployment: its own (the autoscaler's say
    // why it does not scale), its pods and the ReplicaSets that own them (read from the
    // pods, so no ReplicaSet rights are needed).
    let mut objects: HashSet<(String, String)> = super::desired::Kind::ALL
        .into_iter()
        .map(|kind| (kind.as_str().to_string(), q.name.clone()))
        .collect();
    let mut described = Vec::with_capacity(list.items.len());
    for pod in &list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        objects.insert(("Pod".into(), name));
        for owner in pod.metadata.owner_references.iter().flatten() {
            objects.insert((owner.kind.clone(), owner.name.clone()));
        }
        described.push(describe_pod(pod));
    }
    described.sort_by(|a, b| a.name.cmp(&b.name));
    let events: Api<Event> = Api::namespaced(kube.clone(), &q.namespace);
    let all = events
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_error("cannot list the namespace's events", &e))?;
    let mut mine: Vec<(String, ClusterEvent)> = all
        .items
        .into_iter()
        .filter(|e| {
            let o = &e.involved_object;
            objects.contains(&(
                o.kind.clone().unwrap_or_default(),
                o.name.clone().unwrap_or_default(),
            ))
        })
        .map(|e| {
            let when = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
                .or_else(|| {
                    e.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                })
                .unwrap_or_default();
            let o = &e.involved_object;
            let event = ClusterEvent {
                r#type: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                object: format!(
                    "{}/{}",
                    o.kind.clone().unwrap_or_default().to_lowercase(),
                    o.name.clone().unwrap_or_default()
                ),
                message: e.message.unwrap_or_default(),
                count: e.count.map_or(1, |c| u32::try_from(c).unwrap_or(0)),
                last_seen: when.clone(),
            };
            (when, event)
        })
        .collect();
    mine.sort_by(|a, b| a.0.cmp(&b.0));
    let skip = mine.len().saturating_sub(MAX_EVENTS);
    Ok(ClusterDescription {
        pods: described,
        events: mine.into_iter().skip(skip).map(|(_, e)| e).collect(),
    })
}

/// One pod as `kubectl get pods` shows it.
fn describe_pod(pod: &Pod) -> PodDescription {
    let status = pod.status.clone().unwrap_or_default();
    let containers = status.container_statuses.clone().unwrap_or_default();
    let ready = containers.iter().filter(|c| c.ready).count();
    let restarts: i32 = containers.iter().map(|c| c.restart_count).sum();
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".into());
    // kubectl's STATUS: a container's waiting or terminated reason wins over the phase.
    let reason = containers.iter().find_map(|c| {
        let state = c.state.as_ref()?;
        if let Some(w) = &state.waiting {
            return Some((w.reason.clone()?, w.message.clone().unwrap_or_default()));
        }
        let t = state.terminated.as_ref()?;
        Some((t.reason.clone()?, t.message.clone().unwrap_or_default()))
    });
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    let (shown, message) = if pod.metadata.deletion_timestamp.is_some() {
        ("Terminating".to_string(), String::new())
    } else if let Some((reason, message)) = reason {
        (reason, message)
    } else if let Some(c) = unschedulable {
        (
            "Unschedulable".into(),
            c.message.clone().unwrap_or_default(),
        )
    } else {
        (phase.clone(), String::new())
    };
    let spec_containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    PodDescription {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase,
        ready: u32::try_from(ready).unwrap_or(u32::MAX),
        containers: u32::try_from(spec_containers.max(containers.len())).unwrap_or(u32::MAX),
        restarts: u32::try_from(restarts).unwrap_or(0),
        status: shown,
        message,
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        created_at: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodSpec, PodStatus,
    };

    fn waiting(reason: &str, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: "model".into(),
            restart_count: restarts,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(format!("{reason} because")),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_shows_the_reason_kubectl_shows() {
        let mut pod = Pod {
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                container_statuses: Some(vec![waiting("ImagePullBackOff", 0)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        pod.metadata.name = Some("iris-1".into());
        let d = describe_pod(&pod);
        assert_eq!(
            (d.status.as_str(), d.phase.as_str()),
            ("ImagePullBackOff", "Pending")
        );
        assert_eq!(d.message, "ImagePullBackOff because");
        assert_eq!((d.ready, d.containers, d.restarts), (0, 1, 0));
        assert!(!started(&pod, "model"));
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![waiting("CrashLoopBackOff", 4)]),
            ..Default::default()
        });
        assert_eq!(describe_pod(&pod).restarts, 4);
        assert!(started(&pod, "model"), "a restarted container has a log");
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert_eq!(describe_pod(&pod).status, "Terminating");
    }

    #[test]
    fn the_pod_selector_names_the_deployment_and_its_owner() {
        assert_eq!(
            pod_selector(Some("dep1"), "d-1"),
            "app.kubernetes.io/managed-by=ds-deployer,deployer.ds.dev/deployment-id=d-1,deployer.ds.dev/owner=dep1"
        );
        assert!(!pod_selector(None, "d-1").contains("owner"));
    }
}
