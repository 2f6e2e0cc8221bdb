//! Conversions between the wire types of [`ds_core::proto`] and the store's records (the
//! domain types convert in [`ds_core::convert`]).

use super::store::{
    ApiKeyRecord, AuditRecord, DeployBy, DeployerRecord, DeploymentRecord, GrantRecord,
    GroupRecord, Role, StageRecord, StatusRecord, UserKind, UserRecord,
};
use chrono::{DateTime, SecondsFormat, Utc};
use ds_core::proto;

/// RFC 3339 with seconds precision, UTC (`2026-11-22T02:00:00Z`).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

// === deployments ===

impl From<DeploymentRecord> for proto::Deployment {
    fn from(d: DeploymentRecord) -> Self {
        proto::Deployment {
            id: d.id,
            name: d.name,
            namespace: d.namespace,
            spec: Some(d.spec.into()),
            revision_of_last_change: d.revision,
            deployer_id: d.deployer_id,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
        }
    }
}

// === statuses ===

impl From<proto::DeploymentStatus> for StatusRecord {
    fn from(s: proto::DeploymentStatus) -> Self {
        StatusRecord {
            deployment_id: s.deployment_id,
            phase: s.phase,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            updated_replicas: s.updated_replicas,
            applied_revision: s.applied_revision,
            endpoint: s.endpoint,
            last_error: s.last_error,
            reason: s.reason,
            pods: s.pods,
            updated_at: None,
        }
    }
}

impl From<StatusRecord> for proto::DeploymentStatus {
    fn from(s: StatusRecord) -> Self {
        proto::DeploymentStatus {
            deployment_id: s.deployment_id,
            phase: s.phase,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            updated_replicas: s.updated_replicas,
            applied_revision: s.applied_revision,
            endpoint: s.endpoint,
            last_error: s.last_error,
            reason: s.reason,
            pods: s.pods,
        }
    }
}

/// A deployer as the CLI sees it; `online` is decided by the caller from heartbeats.
pub fn deployer_to_proto(d: DeployerRecord, online: bool) -> proto::Deployer {
    let state = if online {
        proto::DeployerState::Online
    } else if d.last_seen.is_some() {
        proto::DeployerState::Offline
    } else {
        proto::DeployerState::Unspecified
    };
    proto::Deployer {
        id: d.id,
        name: d.name,
        state: state as i32,
        agent_version: d.agent_version,
        cluster: d.cluster,
        last_seen: d.last_seen.map(rfc3339).unwrap_or_default(),
        created_at: rfc3339(d.created_at),
        deployments: d.deployments,
        revision: d.revision,
        agent_namespaces: d.agent_namespaces,
        grants: Vec::new(),
        stage: d.stage,
        // Unset without a map, so a deployer without one looks as before.
        remap: (!d.remap.is_empty()).then(|| d.remap.into()),
    }
}

pub fn user_to_proto(u: &UserRecord) -> proto::User {
    let kind = match u.kind {
        UserKind::User => proto::UserKind::User,
        UserKind::ServiceAccount => proto::UserKind::ServiceAccount,
    };
    proto::User {
        name: u.name.clone(),
        kind: kind as i32,
        admin: u.admin,
        created_at: rfc3339(u.created_at),
        groups: u.groups.clone(),
    }
}

pub fn key_to_proto(k: &ApiKeyRecord) -> proto::ApiKey {
    proto::ApiKey {
        id: k.id.clone(),
        user: k.user.clone(),
        created_at: rfc3339(k.created_at),
        expires_at: k.expires_at.map(rfc3339).unwrap_or_default(),
    }
}

pub fn group_to_proto(g: &GroupRecord) -> proto::Group {
    proto::Group {
        name: g.name.clone(),
        created_at: rfc3339(g.created_at),
        members: g.members.clone(),
    }
}

pub fn grant_to_proto(g: &GrantRecord) -> proto::DeployerGrant {
    let role = match g.role {
        Role::View => proto::DeployerRole::View,
        Role::Deploy => proto::DeployerRole::Deploy,
        Role::Admin => proto::DeployerRole::Admin,
    };
    proto::DeployerGrant {
        group: g.group.clone(),
        role: role as i32,
    }
}

// === stages and the audit log ===

impl From<DeployBy> for proto::DeployBy {
    fn from(d: DeployBy) -> Self {
        match d {
            DeployBy::Anyone => proto::DeployBy::Anyone,
            DeployBy::ServiceAccounts => proto::DeployBy::ServiceAccounts,
        }
    }
}

/// A stage at `place` (from 1) in the list.
pub fn stage_to_proto(s: StageRecord, place: usize) -> proto::Stage {
    proto::Stage {
        name: s.name,
        position: u32::try_from(place).unwrap_or(u32::MAX),
        deploy_by: proto::DeployBy::from(s.deploy_by) as i32,
        deployers: s.deployers,
    }
}

impl From<AuditRecord> for proto::AuditEntry {
    fn from(a: AuditRecord) -> Self {
        proto::AuditEntry {
            id: a.id,
            at: a.at.to_rfc3339_opts(SecondsFormat::Millis, true),
            actor: a.actor,
            action: a.action,
            object_kind: a.object_kind,
            object: a.object,
            deployer_id: a.deployer_id.unwrap_or_default(),
            before: a.before.unwrap_or_default(),
            after: a.after.unwrap_or_default(),
            request_id: a.request_id,
            outcome: a.outcome.as_str().to_string(),
            reason: a.reason,
        }
    }
}
