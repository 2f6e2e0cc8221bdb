//! Whether a deployer's agent is there, and what that means for its deployments' views.
//!
//! An agent counts as connected while it has a Watch stream open on this gateway, or
//! reported (heartbeat) within `--offline-after`: the stored heartbeat is what the other
//! replicas of a PostgreSQL-backed gateway see. A deployment of a deployer seen before but
//! not within that window shows phase Unknown, "deployer offline since …": its last status
//! is not known to hold any more. This is computed whenever a view is built, never stored.

use super::Shared;
use super::convert::rfc3339;
use chrono::{DateTime, Utc};
use ds_core::proto::{self, DeploymentView};

/// A deployer's agent as the gateway sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentPresence {
    /// A stream open here, or a report within `offline_after`.
    pub online: bool,
    /// A Watch stream is open on this gateway right now.
    pub streaming: bool,
    /// When it last reported or its stream opened or closed (now while streaming).
    pub last_seen: Option<DateTime<Utc>>,
}

impl AgentPresence {
    /// The presence of deployer `id` whose stored heartbeat is `stored_last_seen`.
    pub fn of(shared: &Shared, id: &str, stored_last_seen: Option<DateTime<Utc>>) -> Self {
        let (streaming, stream_seen) = shared.presence.get(id);
        let last_seen = if streaming {
            Some(Utc::now())
        } else {
            stored_last_seen.max(stream_seen)
        };
        let online = streaming
            || last_seen.is_some_and(|t| {
                (Utc::now() - t).to_std().unwrap_or_default() < shared.offline_after
            });
        Self {
            online,
            streaming,
            last_seen,
        }
    }
}

/// Marks `view` with its deployer's presence: whether an agent is connected, when it was
/// last seen, and phase Unknown with the reason while a deployer seen before is offline.
pub fn mark(view: &mut DeploymentView, presence: AgentPresence) {
    view.agent_connected = presence.online;
    view.agent_last_seen = presence.last_seen.map(rfc3339).unwrap_or_default();
    if presence.online {
        return;
    }
    // Never seen: nothing was reported to doubt, and `--wait` says "never" by itself.
    let Some(since) = presence.last_seen else {
        return;
    };
    let status = view.status.get_or_insert_with(Default::default);
    status.phase = proto::Phase::Unknown as i32;
    status.reason = format!("deployer offline since {}", rfc3339(since));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn available() -> DeploymentView {
        DeploymentView {
            status: Some(proto::DeploymentStatus {
                phase: proto::Phase::Available as i32,
                ready_replicas: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_offline_deployer_makes_its_deployments_unknown() {
        let since: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        let mut v = available();
        mark(
            &mut v,
            AgentPresence {
                online: false,
                streaming: false,
                last_seen: Some(since),
            },
        );
        let s = v.status.unwrap();
        assert_eq!(s.phase, proto::Phase::Unknown as i32);
        assert_eq!(s.reason, "deployer offline since 2026-12-02T10:00:00Z");
        assert!(!v.agent_connected);
        assert_eq!(v.agent_last_seen, "2026-12-02T10:00:00Z");
        assert_eq!(s.ready_replicas, 1, "the last report stays visible");
    }

    #[test]
    fn online_and_never_seen_deployers_keep_the_reported_phase() {
        let mut v = available();
        let now = Utc::now();
        mark(
            &mut v,
            AgentPresence {
                online: true,
                streaming: true,
                last_seen: Some(now),
            },
        );
        assert!(v.agent_connected);
        assert_eq!(
            v.status.as_ref().unwrap().phase,
            proto::Phase::Available as i32
        );
        let mut v = DeploymentView::default();
        mark(
            &mut v,
            AgentPresence {
                online: false,
                streaming: false,
                last_seen: None,
            },
        );
        assert!(!v.agent_connected);
        assert_eq!(v.agent_last_seen, "");
        assert!(v.status.is_none());
    }
}
