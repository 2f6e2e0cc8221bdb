//! `ds user …`, `ds apikey …`, `ds group …` and `ds deployer grant|revoke`: who may use
//! the gateway, and what each group may do on each deployer.

use super::client::{self, request, status_error};
use super::output::{self, fields, format_age, print};
use super::{CliError, GlobalArgs, config};
use clap::{Args, Subcommand, ValueEnum};
use ds_core::proto;
use serde::Serialize;
use std::time::Duration;

// === arguments ===

/// `ds user …`
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

/// The user subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (or a service account); give it a key with `ds apikey create --user`.
    Create {
        /// User name (DNS-1123 label), e.g. `alice` or `ci-prod`.
        name: String,
        /// A technical account (e.g. for CI) rather than a person.
        #[arg(long)]
        service_account: bool,
        /// Make it a gateway admin: every permission, manages users, groups and deployers.
        #[arg(long)]
        admin: bool,
    },
    /// List users with their groups.
    #[command(visible_alias = "list")]
    Ls,
    /// Delete a user with its API keys; refused for the last gateway admin.
    #[command(visible_alias = "delete")]
    Rm {
        /// User name.
        name: String,
    },
}

/// `ds apikey …`
#[derive(Debug, Args)]
pub struct ApikeyArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: ApikeyCommand,
}

/// The API key subcommands.
#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create an API key; prints it, shown only this once.
    Create {
        /// Whose key (default: your own; another user's needs a gateway admin).
        #[arg(long)]
        user: Option<String>,
        /// How long it works, e.g. `90d`, `12h` (default: it does not expire).
        #[arg(long, value_parser = ds_core::duration::parse)]
        expires: Option<Duration>,
    },
    /// List API keys by ID (never the secrets).
    #[command(visible_alias = "list")]
    Ls {
        /// Only this user's keys (default: your own; every key for a gateway admin).
        #[arg(long)]
        user: Option<String>,
    },
    /// Delete an API key: it stops working at once.
    #[command(visible_alias = "delete")]
    Rm {
        /// The key's ID, as `ds apikey ls` shows it.
        id: String,
    },
}

/// `ds group …`
#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: GroupCommand,
}

/// The group subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group; grant it roles with `ds deployer grant`.
    Create {
        /// Group name (DNS-1123 label).
        name: String,
    },
    /// List groups with their members.
    #[command(visible_alias = "list")]
    Ls,
    /// Delete a group with its memberships and grants.
    #[command(visible_alias = "delete")]
    Rm {
        /// Group name.
        name: String,
    },
    /// Make a user a member of a group.
    AddMember {
        /// Group name.
        group: String,
        /// User name.
        user: String,
    },
    /// End a user's membership of a group.
    RemoveMember {
        /// Group name.
        group: String,
        /// User name.
        user: String,
    },
}

/// A role on a deployer, as `--role` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// See the deployer, its deployments and their details.
    View,
    /// Also create, update, roll back and delete deployments.
    Deploy,
    /// Also the deployer's settings: token, install, grants.
    Admin,
}

impl From<RoleArg> for proto::DeployerRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::View => proto::DeployerRole::View,
            RoleArg::Deploy => proto::DeployerRole::Deploy,
            RoleArg::Admin => proto::DeployerRole::Admin,
        }
    }
}

// === views ===

/// A user as `-o json|yaml` shows it.
#[derive(Debug, Serialize)]
struct UserView {
    name: String,
    /// `user` or `service-account`.
    kind: &'static str,
    admin: bool,
    groups: Vec<String>,
    created_at: String,
}

impl From<&proto::User> for UserView {
    fn from(u: &proto::User) -> Self {
        let kind = match proto::UserKind::try_from(u.kind) {
            Ok(proto::UserKind::ServiceAccount) => "service-account",
            _ => "user",
        };
        Self {
            name: u.name.clone(),
            kind,
            admin: u.admin,
            groups: u.groups.clone(),
            created_at: u.created_at.clone(),
        }
    }
}

/// An API key as `-o json|yaml` shows it.
#[derive(Debug, Serialize)]
struct KeyView {
    id: String,
    user: String,
    created_at: String,
    expires_at: Option<String>,
}

impl From<&proto::ApiKey> for KeyView {
    fn from(k: &proto::ApiKey) -> Self {
        Self {
            id: k.id.clone(),
            user: k.user.clone(),
            created_at: k.created_at.clone(),
            expires_at: (!k.expires_at.is_empty()).then(|| k.expires_at.clone()),
        }
    }
}

/// What `ds apikey create` prints: the key is in the only copy there will ever be.
#[derive(Debug, Serialize)]
struct CreatedKey {
    #[serde(flatten)]
    key: KeyView,
    secret: String,
}

/// A group as `-o json|yaml` shows it.
#[derive(Debug, Serialize)]
struct GroupView {
    name: String,
    members: Vec<String>,
    created_at: String,
}

impl From<&proto::Group> for GroupView {
    fn from(g: &proto::Group) -> Self {
        Self {
            name: g.name.clone(),
            members: g.members.clone(),
            created_at: g.created_at.clone(),
        }
    }
}

/// A group's role on a deployer as `-o json|yaml` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub group: String,
    /// `view`, `deploy` or `admin`.
    pub role: &'static str,
}

impl From<&proto::DeployerGrant> for GrantView {
    fn from(g: &proto::DeployerGrant) -> Self {
        let role = match proto::DeployerRole::try_from(g.role) {
            Ok(proto::DeployerRole::View) => "view",
            Ok(proto::DeployerRole::Deploy) => "deploy",
            Ok(proto::DeployerRole::Admin) => "admin",
            _ => "unknown",
        };
        Self {
            group: g.group.clone(),
            role,
        }
    }
}

/// `ml=view, ops=admin`, or `<none>`.
pub fn grants_text(grants: &[GrantView]) -> String {
    if grants.is_empty() {
        "<none>".to_string()
    } else {
        grants
            .iter()
            .map(|g| format!("{}={}", g.group, g.role))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "<none>".to_string()
    } else {
        items.join(",")
    }
}

fn check_user(flag: &str, name: &str) -> Result<(), CliError> {
    ds_core::validate::validate_user_name(flag, name).map_err(Into::into)
}

fn check_group(flag: &str, name: &str) -> Result<(), CliError> {
    ds_core::validate::validate_group_name(flag, name).map_err(Into::into)
}

// === commands ===

pub async fn user(args: UserArgs) -> Result<(), CliError> {
    let format = args.global.output;
    match &args.command {
        UserCommand::Create { name, .. } | UserCommand::Rm { name } => check_user("name", name)?,
        UserCommand::Ls => {}
    }
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let err = |status| status_error(status, &url);
    match args.command {
        UserCommand::Create {
            name,
            service_account,
            admin,
        } => {
            let kind = if service_account {
                proto::UserKind::ServiceAccount
            } else {
                proto::UserKind::User
            };
            let user = control
                .create_user(request(proto::CreateUserRequest {
                    name,
                    kind: kind as i32,
                    admin,
                }))
                .await
                .map_err(err)?
                .into_inner();
            let view = UserView::from(&user);
            print(format, &view, || {
                format!(
                    "{} {} created{}",
                    view.kind,
                    view.name,
                    if view.admin { " (gateway admin)" } else { "" }
                )
            })?;
            if format.is_human() {
                eprintln!(
                    "Give it a key with `ds apikey create --user {}`.",
                    view.name
                );
            }
        }
        UserCommand::Ls => {
            let users = control
                .list_users(request(proto::ListUsersRequest {}))
                .await
                .map_err(err)?
                .into_inner()
                .users;
            let views: Vec<UserView> = users.iter().map(UserView::from).collect();
            print(format, &views, || {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.kind.to_string(),
                            u.admin.to_string(),
                            list_or_none(&u.groups),
                            format_age(&u.created_at),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "KIND", "ADMIN", "GROUPS", "AGE"], &rows)
            })?;
        }
        UserCommand::Rm { name } => {
            control
                .delete_user(request(proto::DeleteUserRequest { name: name.clone() }))
                .await
                .map_err(err)?;
            output::print_text(&format!("user {name} deleted (its API keys stop working)"))?;
        }
    }
    Ok(())
}

pub async fn apikey(args: ApikeyArgs) -> Result<(), CliError> {
    let format = args.global.output;
    match &args.command {
        ApikeyCommand::Create { user, expires } => {
            if let Some(user) = user {
                check_user("--user", user)?;
            }
            ds_core::validate::validate_api_key_lifetime("--expires", *expires)?;
        }
        ApikeyCommand::Ls { user: Some(user) } => check_user("--user", user)?,
        _ => {}
    }
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let err = |status| status_error(status, &url);
    match args.command {
        ApikeyCommand::Create { user, expires } => {
            let created = control
                .create_api_key(request(proto::CreateApiKeyRequest {
                    user: user.unwrap_or_default(),
                    expires_in_seconds: expires.map_or(0, |d| d.as_secs().max(1)),
                }))
                .await
                .map_err(err)?
                .into_inner();
            let key = KeyView::from(&created.key.unwrap_or_default());
            let shown = CreatedKey {
                secret: created.secret,
                key,
            };
            print(format, &shown, || {
                fields(&[
                    ("ID", shown.key.id.clone()),
                    ("User", shown.key.user.clone()),
                    (
                        "Expires",
                        shown
                            .key
                            .expires_at
                            .clone()
                            .unwrap_or_else(|| "<never>".into()),
                    ),
                    ("Key", shown.secret.clone()),
                ])
            })?;
            if format.is_human() {
                eprintln!(
                    "Save the key now: it is shown only once. Use it with `ds login --api-key -` or DS_API_KEY."
                );
            }
        }
        ApikeyCommand::Ls { user } => {
            let keys = control
                .list_api_keys(request(proto::ListApiKeysRequest {
                    user: user.unwrap_or_default(),
                }))
                .await
                .map_err(err)?
                .into_inner()
                .keys;
            let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
            print(format, &views, || {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|k| {
                        vec![
                            k.id.clone(),
                            k.user.clone(),
                            k.expires_at.clone().unwrap_or_else(|| "<never>".into()),
                            format_age(&k.created_at),
                        ]
                    })
                    .collect();
                output::table(&["ID", "USER", "EXPIRES", "AGE"], &rows)
            })?;
        }
        ApikeyCommand::Rm { id } => {
            control
                .delete_api_key(request(proto::DeleteApiKeyRequest { id: id.clone() }))
                .await
                .map_err(err)?;
            output::print_text(&format!("API key {id} deleted"))?;
        }
    }
    Ok(())
}

pub async fn group(args: GroupArgs) -> Result<(), CliError> {
    let format = args.global.output;
    match &args.command {
        GroupCommand::Create { name } | GroupCommand::Rm { name } => check_group("name", name)?,
        GroupCommand::AddMember { group, user } | GroupCommand::RemoveMember { group, user } => {
            check_group("group", group)?;
            check_user("user", user)?;
        }
        GroupCommand::Ls => {}
    }
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let err = |status| status_error(status, &url);
    let print_group = |group: proto::Group, text: String| -> Result<(), CliError> {
        let view = GroupView::from(&group);
        print(format, &view, || text)
    };
    match args.command {
        GroupCommand::Create { name } => {
            let group = control
                .create_group(request(proto::CreateGroupRequest { name: name.clone() }))
                .await
                .map_err(err)?
                .into_inner();
            print_group(group, format!("group {name} created"))?;
        }
        GroupCommand::Ls => {
            let groups = control
                .list_groups(request(proto::ListGroupsRequest {}))
                .await
                .map_err(err)?
                .into_inner()
                .groups;
            let views: Vec<GroupView> = groups.iter().map(GroupView::from).collect();
            print(format, &views, || {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|g| {
                        vec![
                            g.name.clone(),
                            list_or_none(&g.members),
                            format_age(&g.created_at),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "MEMBERS", "AGE"], &rows)
            })?;
        }
        GroupCommand::Rm { name } => {
            control
                .delete_group(request(proto::DeleteGroupRequest { name: name.clone() }))
                .await
                .map_err(err)?;
            output::print_text(&format!(
                "group {name} deleted (with its memberships and grants)"
            ))?;
        }
        GroupCommand::AddMember { group, user } => {
            let found = control
                .add_group_member(request(proto::GroupMemberRequest {
                    group: group.clone(),
                    user: user.clone(),
                }))
                .await
                .map_err(err)?
                .into_inner();
            print_group(found, format!("user {user} added to group {group}"))?;
        }
        GroupCommand::RemoveMember { group, user } => {
            let found = control
                .remove_group_member(request(proto::GroupMemberRequest {
                    group: group.clone(),
                    user: user.clone(),
                }))
                .await
                .map_err(err)?
                .into_inner();
            print_group(found, format!("user {user} removed from group {group}"))?;
        }
    }
    Ok(())
}

/// `ds deployer grant NAME --group G --role R`, or `revoke` without a role: prints the
/// deployer's grants after the change.
pub async fn grant(
    control: &mut client::Control,
    url: &str,
    format: output::OutputFormat,
    deployer: String,
    group: String,
    role: Option<RoleArg>,
) -> Result<(), CliError> {
    let err = |status| status_error(status, url);
    let grants = match role {
        Some(role) => control
            .grant_deployer(request(proto::GrantDeployerRequest {
                deployer: deployer.clone(),
                group: group.clone(),
                role: proto::DeployerRole::from(role) as i32,
            }))
            .await
            .map_err(err)?
            .into_inner(),
        None => control
            .revoke_deployer(request(proto::RevokeDeployerRequest {
                deployer: deployer.clone(),
                group: group.clone(),
            }))
            .await
            .map_err(err)?
            .into_inner(),
    };
    let views: Vec<GrantView> = grants.grants.iter().map(GrantView::from).collect();
    print(format, &views, || {
        let what = match role {
            Some(role) => format!("group {group} has the {role:?} role on deployer {deployer}"),
            None => format!("group {group} has no role on deployer {deployer} any more"),
        };
        format!("{what}\ngrants: {}", grants_text(&views))
    })
}
