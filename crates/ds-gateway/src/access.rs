//! Who a caller is and what it may do: the [`Principal`] behind a credential, its role on
//! each deployer, and the one table ([`Rpc::rule`]) of what every ControlService RPC needs.
//!
//! Roles are per deployer, `View < Deploy < Admin`, the highest over the principal's
//! groups' grants. Gateway admins have every role everywhere and alone manage users,
//! groups, other users' keys, and the creation and deletion of deployers. A deployer on
//! which a principal has no role is invisible to it: absent from lists and NOT_FOUND by
//! name, exactly as a missing one.

use super::store::{GrantRecord, KeyOwner, Role, UserKind, UserRecord};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// What an RPC needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any valid credential (the answer shows only what the caller may see).
    Authenticated,
    /// Any valid credential for the caller's own account; a gateway admin for another's.
    SelfOrGatewayAdmin,
    /// A gateway admin.
    GatewayAdmin,
    /// At least this role on the deployer the request is about.
    Deployer(Role),
}

/// Every RPC of ControlService (proto/deployer/v1/deployer.proto), named as there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    CreateDeployer,
    ListDeployers,
    GetDeployer,
    DeleteDeployer,
    RotateDeployerToken,
    CreateInstallCode,
    CreateDeployment,
    ListDeployments,
    GetDeployment,
    UpdateDeployment,
    DeleteDeployment,
    WatchDeploymentStatus,
    DeploymentLogs,
    DescribeDeployment,
    GetVersion,
    GetDeploymentHistory,
    GetDeploymentRevision,
    RollbackDeployment,
    CreateUser,
    ListUsers,
    DeleteUser,
    CreateApiKey,
    ListApiKeys,
    DeleteApiKey,
    CreateGroup,
    ListGroups,
    DeleteGroup,
    AddGroupMember,
    RemoveGroupMember,
    GrantDeployer,
    RevokeDeployer,
    ListStages,
    CreateStage,
    DeleteStage,
    RenameStage,
    UpdateStage,
    UpdateDeployer,
    ListAudit,
    AddHook,
    ListHooks,
    RemoveHook,
    SetDeployerRemap,
    PromoteDeployment,
}

impl Rpc {
    /// Every RPC, in the proto's order (the test that holds the table to the proto).
    #[cfg(test)]
    pub const ALL: [Rpc; 43] = [
        Rpc::CreateDeployer,
        Rpc::ListDeployers,
        Rpc::GetDeployer,
        Rpc::DeleteDeployer,
        Rpc::RotateDeployerToken,
        Rpc::CreateInstallCode,
        Rpc::CreateDeployment,
        Rpc::ListDeployments,
        Rpc::GetDeployment,
        Rpc::UpdateDeployment,
        Rpc::DeleteDeployment,
        Rpc::WatchDeploymentStatus,
        Rpc::DeploymentLogs,
        Rpc::DescribeDeployment,
        Rpc::GetVersion,
        Rpc::GetDeploymentHistory,
        Rpc::GetDeploymentRevision,
        Rpc::RollbackDeployment,
        Rpc::CreateUser,
        Rpc::ListUsers,
        Rpc::DeleteUser,
        Rpc::CreateApiKey,
        Rpc::ListApiKeys,
        Rpc::DeleteApiKey,
        Rpc::CreateGroup,
        Rpc::ListGroups,
        Rpc::DeleteGroup,
        Rpc::AddGroupMember,
        Rpc::RemoveGroupMember,
        Rpc::GrantDeployer,
        Rpc::RevokeDeployer,
        Rpc::ListStages,
        Rpc::CreateStage,
        Rpc::DeleteStage,
        Rpc::RenameStage,
        Rpc::UpdateStage,
        Rpc::UpdateDeployer,
        Rpc::ListAudit,
        Rpc::AddHook,
        Rpc::ListHooks,
        Rpc::RemoveHook,
        Rpc::SetDeployerRemap,
        Rpc::PromoteDeployment,
    ];

    /// THE permission table: what each RPC needs, and what it does in the words of a
    /// refusal ("updating deployments … needs the Deploy role").
    ///
    /// A deployer's settings (its token, install codes, grants) need deployer Admin;
    /// creating and deleting deployers, like users, groups, stages and the audit log, need a
    /// gateway admin.
    pub fn rule(self) -> (Need, &'static str) {
        use Need::{Authenticated, Deployer, GatewayAdmin, SelfOrGatewayAdmin};
        use Role::{Admin, Deploy, View};
        match self {
            Rpc::CreateDeployer => (GatewayAdmin, "creating deployers"),
            Rpc::ListDeployers => (Authenticated, "listing deployers"),
            Rpc::GetDeployer => (Deployer(View), "reading the deployer"),
            Rpc::DeleteDeployer => (GatewayAdmin, "deleting deployers"),
            Rpc::RotateDeployerToken => (Deployer(Admin), "rotating the token"),
            Rpc::CreateInstallCode => (Deployer(Admin), "installing the agent"),
            Rpc::CreateDeployment => (Deployer(Deploy), "creating deployments"),
            Rpc::ListDeployments => (Authenticated, "listing deployments"),
            Rpc::GetDeployment => (Deployer(View), "reading deployments"),
            Rpc::UpdateDeployment => (Deployer(Deploy), "updating deployments"),
            Rpc::DeleteDeployment => (Deployer(Deploy), "deleting deployments"),
            Rpc::WatchDeploymentStatus => (Deployer(View), "watching deployments"),
            Rpc::DeploymentLogs => (Deployer(View), "reading logs"),
            Rpc::DescribeDeployment => (Deployer(View), "describing deployments"),
            Rpc::GetVersion => (Authenticated, "reading the version"),
            Rpc::GetDeploymentHistory => (Deployer(View), "reading deployment history"),
            Rpc::GetDeploymentRevision => (Deployer(View), "reading deployment revisions"),
            Rpc::RollbackDeployment => (Deployer(Deploy), "rolling deployments back"),
            Rpc::CreateUser => (GatewayAdmin, "creating users"),
            Rpc::ListUsers => (GatewayAdmin, "listing users"),
            Rpc::DeleteUser => (GatewayAdmin, "deleting users"),
            Rpc::CreateApiKey => (SelfOrGatewayAdmin, "creating API keys of other users"),
            Rpc::ListApiKeys => (SelfOrGatewayAdmin, "listing API keys of other users"),
            Rpc::DeleteApiKey => (SelfOrGatewayAdmin, "deleting API keys of other users"),
            Rpc::CreateGroup => (GatewayAdmin, "creating groups"),
            Rpc::ListGroups => (GatewayAdmin, "listing groups"),
            Rpc::DeleteGroup => (GatewayAdmin, "deleting groups"),
            Rpc::AddGroupMember => (GatewayAdmin, "adding group members"),
            Rpc::RemoveGroupMember => (GatewayAdmin, "removing group members"),
            Rpc::GrantDeployer => (Deployer(Admin), "granting roles"),
            Rpc::RevokeDeployer => (Deployer(Admin), "revoking roles"),
            Rpc::ListStages => (Authenticated, "listing stages"),
            Rpc::CreateStage => (GatewayAdmin, "creating stages"),
            Rpc::DeleteStage => (GatewayAdmin, "deleting stages"),
            Rpc::RenameStage => (GatewayAdmin, "renaming stages"),
            Rpc::UpdateStage => (GatewayAdmin, "changing stage policies"),
            // Moving a deployer out of a restricted stage would lift its policy.
            Rpc::UpdateDeployer => (GatewayAdmin, "changing a deployer's stage"),
            Rpc::ListAudit => (GatewayAdmin, "reading the audit log"),
            // A hook runs with the gateway's rights on every change: a deployer setting.
            Rpc::AddHook => (Deployer(Admin), "adding hooks"),
            Rpc::ListHooks => (Deployer(View), "listing hooks"),
            Rpc::RemoveHook => (Deployer(Admin), "removing hooks"),
            Rpc::SetDeployerRemap => (Deployer(Admin), "changing the deployer's remapping"),
            // Deploy on the target; the source needs only View (being visible), checked
            // when it is selected.
            Rpc::PromoteDeployment => (Deployer(Deploy), "promoting deployments to it"),
        }
    }

    /// What the RPC needs.
    pub fn need(self) -> Need {
        self.rule().0
    }
}

/// How a principal authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An API key, by its public ID.
    ApiKey(String),
    /// A bearer token (OIDC/JWT) of this subject.
    Token,
}

/// Who is calling, and what it may do on each deployer.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's name (for a token, its subject).
    pub name: String,
    /// A person or a service account (stage policies may admit only the latter).
    pub kind: UserKind,
    /// A gateway admin: every permission.
    pub admin: bool,
    /// Its groups: the stored memberships, and for a token also its groups claim.
    pub groups: Vec<String>,
    pub credential: Credential,
    /// When the credential stops working; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The highest role of its groups on each deployer, by deployer ID.
    roles: HashMap<String, Role>,
}

/// Why a principal may not do something on a deployer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No role there: the deployer does not exist for it.
    Invisible,
    /// A role there, but a lower one than needed.
    Short { have: Role, need: Role },
}

impl Principal {
    /// The principal an API key authenticates: its user, the user's groups, and their
    /// roles from `grants` (all of them, or at least those of its groups).
    pub fn from_key(owner: &KeyOwner, grants: &[GrantRecord]) -> Self {
        Self::build(
            &owner.user,
            owner.user.groups.clone(),
            Credential::ApiKey(owner.key.id.clone()),
            owner.key.expires_at,
            grants,
        )
    }

    /// The principal a verified bearer token authenticates: `subject` as the user (with
    /// its stored kind, admin flag and groups when a user of that name exists), and the
    /// token's groups besides.
    pub fn from_token(
        subject: &str,
        token_groups: &[String],
        stored: Option<&UserRecord>,
        expires_at: Option<DateTime<Utc>>,
        grants: &[GrantRecord],
    ) -> Self {
        let user = stored.cloned().unwrap_or_else(|| UserRecord {
            name: subject.to_string(),
            kind: UserKind::User,
            admin: false,
            created_at: Utc::now(),
            groups: Vec::new(),
        });
        let mut groups = user.groups.clone();
        for g in token_groups {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        groups.sort();
        Self::build(&user, groups, Credential::Token, expires_at, grants)
    }

    fn build(
        user: &UserRecord,
        groups: Vec<String>,
        credential: Credential,
        expires_at: Option<DateTime<Utc>>,
        grants: &[GrantRecord],
    ) -> Self {
        let mut roles: HashMap<String, Role> = HashMap::new();
        for g in grants.iter().filter(|g| groups.contains(&g.group)) {
            let role = roles.entry(g.deployer_id.clone()).or_insert(g.role);
            *role = (*role).max(g.role);
        }
        Self {
            name: user.name.clone(),
            kind: user.kind,
            admin: user.admin,
            groups,
            credential,
            expires_at,
            roles,
        }
    }

    /// Who made a change, as revisions (and the audit log) record it: the user and the
    /// key's public ID, e.g. `alice (key 1a2b3c4d5e6f7a8b)`; never a secret.
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::ApiKey(id) => format!("{} (key {id})", self.name),
            Credential::Token => format!("oidc:{}", self.name),
        }
    }

    /// Its role on a deployer, if any (gateway admins: Admin everywhere).
    pub fn role_on(&self, deployer_id: &str) -> Option<Role> {
        if self.admin {
            Some(Role::Admin)
        } else {
            self.roles.get(deployer_id).copied()
        }
    }

    /// Whether the deployer exists for it (any role there).
    pub fn can_view(&self, deployer_id: &str) -> bool {
        self.role_on(deployer_id).is_some()
    }

    /// Whether it may do what needs `need` on the deployer.
    pub fn check(&self, deployer_id: &str, need: Role) -> Result<(), Denied> {
        match self.role_on(deployer_id) {
            None => Err(Denied::Invisible),
            Some(have) if have < need => Err(Denied::Short { have, need }),
            Some(_) => Ok(()),
        }
    }

    /// Whether the credential is past its expiry now.
    pub fn expired(&self) -> bool {
        self.expires_at.is_some_and(|t| t <= Utc::now())
    }

    /// Its groups for a message: `groups: a, b` or `no groups`.
    pub fn groups_shown(&self) -> String {
        if self.groups.is_empty() {
            "no groups".to_string()
        } else {
            format!("groups: {}", self.groups.join(", "))
        }
    }

    /// The refusal of an action on deployer `deployer` for which `have` is too low.
    pub fn short_message(&self, action: &str, deployer: &str, need: Role, have: Role) -> String {
        format!(
            "{action} on deployer '{deployer}' needs the {need} role; you have {have} ({})",
            self.groups_shown()
        )
    }

    /// The refusal of an action that needs a gateway admin.
    pub fn not_admin_message(&self, action: &str) -> String {
        format!(
            "{action} needs a gateway admin; {} is not one ({})",
            self.name,
            self.groups_shown()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, admin: bool, groups: &[&str]) -> UserRecord {
        UserRecord {
            name: name.into(),
            kind: UserKind::User,
            admin,
            created_at: Utc::now(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn grant(deployer: &str, group: &str, role: Role) -> GrantRecord {
        GrantRecord {
            deployer_id: deployer.into(),
            group: group.into(),
            role,
        }
    }

    fn owner(u: UserRecord) -> KeyOwner {
        KeyOwner {
            key: super::super::store::ApiKeyRecord {
                id: "0123456789abcdef".into(),
                user: u.name.clone(),
                created_at: Utc::now(),
                expires_at: None,
            },
            hash: [0; 32],
            user: u,
        }
    }

    /// Every RPC of ControlService in the proto has exactly one entry in the table, and
    /// the table names no RPC the proto does not have.
    #[test]
    fn the_table_has_exactly_the_rpcs_of_the_proto() {
        let proto = include_str!("../../../proto/deployer/v1/deployer.proto");
        let service = proto
            .split("service ControlService {")
            .nth(1)
            .expect("ControlService in the proto");
        let body = &service[..service.find("\n}").expect("the service's end")];
        let in_proto: Vec<String> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l[..l.find('(').expect("rpc NAME(")].trim().to_string())
            .collect();
        let in_table: Vec<String> = Rpc::ALL.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(in_table, in_proto);
    }

    #[test]
    fn the_highest_role_of_a_users_groups_counts() {
        let grants = [
            grant("d1", "ml", Role::View),
            grant("d1", "ops", Role::Deploy),
            grant("d2", "ml", Role::Admin),
            grant("d3", "other", Role::Admin),
        ];
        let p = Principal::from_key(&owner(user("alice", false, &["ml", "ops"])), &grants);
        assert_eq!(p.role_on("d1"), Some(Role::Deploy));
        assert_eq!(p.role_on("d2"), Some(Role::Admin));
        assert_eq!(p.role_on("d3"), None);
        assert_eq!(p.check("d3", Role::View), Err(Denied::Invisible));
        assert_eq!(p.check("d1", Role::Deploy), Ok(()));
        assert_eq!(
            p.check("d1", Role::Admin),
            Err(Denied::Short {
                have: Role::Deploy,
                need: Role::Admin
            })
        );
        assert_eq!(p.actor(), "alice (key 0123456789abcdef)");
    }

    #[test]
    fn gateway_admins_have_every_role_everywhere() {
        let p = Principal::from_key(&owner(user("root", true, &[])), &[]);
        assert_eq!(p.check("anything", Role::Admin), Ok(()));
    }

    #[test]
    fn a_token_adds_its_groups_to_the_stored_ones() {
        let grants = [
            grant("d1", "ml", Role::View),
            grant("d2", "sso", Role::Deploy),
        ];
        let stored = user("bob", false, &["ml"]);
        let p = Principal::from_token("bob", &["sso".into()], Some(&stored), None, &grants);
        assert_eq!(p.groups, vec!["ml".to_string(), "sso".to_string()]);
        assert_eq!(p.role_on("d1"), Some(Role::View));
        assert_eq!(p.role_on("d2"), Some(Role::Deploy));
        // A subject without a stored user: a plain user with the token's groups only.
        let p = Principal::from_token("carol", &["sso".into()], None, None, &grants);
        assert!(!p.admin);
        assert_eq!(p.role_on("d1"), None);
        assert_eq!(p.role_on("d2"), Some(Role::Deploy));
    }

    #[test]
    fn refusals_say_what_is_missing() {
        let p = Principal::from_key(&owner(user("alice", false, &["ml"])), &[]);
        assert_eq!(
            p.short_message("updating deployments", "prod", Role::Deploy, Role::View),
            "updating deployments on deployer 'prod' needs the Deploy role; you have View (groups: ml)"
        );
        assert_eq!(
            p.not_admin_message("creating users"),
            "creating users needs a gateway admin; alice is not one (groups: ml)"
        );
    }
}
