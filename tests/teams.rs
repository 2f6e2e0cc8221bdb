//! Teams at a real gateway (127.0.0.1:0, a temporary SQLite file): the permission matrix
//! (every ControlService RPC × no grant, View, Deploy, Admin, gateway admin, with real
//! gRPC calls), a user with View on one deployer and Deploy on another through the `ds`
//! binary, and a database of the release before teams opening with its admin key.

use ds_core::DeploymentSpec;
use ds_core::proto;
use ds_test_support::cli::{self, Run};
use ds_test_support::{Control, TestGateway, control_client};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tonic::{Code, Status};

/// Generous bound for a `ds` run on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

// === the permission matrix ===

/// What an RPC needs, written here again as the spec the gateway's table must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Authenticated,
    /// Another user's keys: a gateway admin.
    OthersKeys,
    GatewayAdmin,
    /// At least this role (1 View, 2 Deploy, 3 Admin) on the deployer.
    Role(u8),
}

const VIEW: Need = Need::Role(1);
const DEPLOY: Need = Need::Role(2);
const ADMIN: Need = Need::Role(3);

const TABLE: &[(&str, Need)] = &[
    ("CreateDeployer", Need::GatewayAdmin),
    ("ListDeployers", Need::Authenticated),
    ("GetDeployer", VIEW),
    ("DeleteDeployer", Need::GatewayAdmin),
    ("RotateDeployerToken", ADMIN),
    ("CreateInstallCode", ADMIN),
    ("CreateDeployment", DEPLOY),
    ("ListDeployments", Need::Authenticated),
    ("GetDeployment", VIEW),
    ("UpdateDeployment", DEPLOY),
    ("DeleteDeployment", DEPLOY),
    ("WatchDeploymentStatus", VIEW),
    ("DeploymentLogs", VIEW),
    ("DescribeDeployment", VIEW),
    ("GetVersion", Need::Authenticated),
    ("GetDeploymentHistory", VIEW),
    ("GetDeploymentRevision", VIEW),
    ("RollbackDeployment", DEPLOY),
    ("CreateUser", Need::GatewayAdmin),
    ("ListUsers", Need::GatewayAdmin),
    ("DeleteUser", Need::GatewayAdmin),
    ("CreateApiKey", Need::OthersKeys),
    ("ListApiKeys", Need::OthersKeys),
    ("DeleteApiKey", Need::OthersKeys),
    ("CreateGroup", Need::GatewayAdmin),
    ("ListGroups", Need::GatewayAdmin),
    ("DeleteGroup", Need::GatewayAdmin),
    ("AddGroupMember", Need::GatewayAdmin),
    ("RemoveGroupMember", Need::GatewayAdmin),
    ("GrantDeployer", ADMIN),
    ("RevokeDeployer", ADMIN),
    ("ListStages", Need::Authenticated),
    ("CreateStage", Need::GatewayAdmin),
    ("DeleteStage", Need::GatewayAdmin),
    ("RenameStage", Need::GatewayAdmin),
    ("UpdateStage", Need::GatewayAdmin),
    ("UpdateDeployer", Need::GatewayAdmin),
    ("ListAudit", Need::GatewayAdmin),
    ("SetDeployerRemap", ADMIN),
    // Deploy on the target `d`; every case sees the source (View on `src`).
    ("PromoteDeployment", DEPLOY),
    ("AddHook", ADMIN),
    ("ListHooks", VIEW),
    ("RemoveHook", ADMIN),
];

/// Who calls: a role on deployer `d` through its group (0 none … 3 Admin), or a gateway
/// admin without any grant.
#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    role: u8,
    gateway_admin: bool,
}

const CASES: [Case; 5] = [
    Case {
        name: "none",
        role: 0,
        gateway_admin: false,
    },
    Case {
        name: "view",
        role: 1,
        gateway_admin: false,
    },
    Case {
        name: "deploy",
        role: 2,
        gateway_admin: false,
    },
    Case {
        name: "admin",
        role: 3,
        gateway_admin: false,
    },
    Case {
        name: "root",
        role: 0,
        gateway_admin: true,
    },
];

/// What a call must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    /// The deployer does not exist for the caller.
    NotFound,
    PermissionDenied,
}

fn expected(need: Need, case: Case) -> Outcome {
    match need {
        Need::Authenticated => Outcome::Allowed,
        _ if case.gateway_admin => Outcome::Allowed,
        Need::GatewayAdmin | Need::OthersKeys => Outcome::PermissionDenied,
        Need::Role(_) if case.role == 0 => Outcome::NotFound,
        Need::Role(r) if case.role < r => Outcome::PermissionDenied,
        Need::Role(_) => Outcome::Allowed,
    }
}

fn role_of(role: u8) -> proto::DeployerRole {
    match role {
        1 => proto::DeployerRole::View,
        2 => proto::DeployerRole::Deploy,
        _ => proto::DeployerRole::Admin,
    }
}

fn select(deployment: &str) -> proto::GetDeploymentRequest {
    proto::GetDeploymentRequest {
        deployment: deployment.to_string(),
        deployer: "d".into(),
        namespace: "models".into(),
    }
}

async fn create_deployment(c: &mut Control, deployer: &str, name: &str) -> Result<(), Status> {
    c.create_deployment(proto::CreateDeploymentRequest {
        deployer: deployer.into(),
        name: name.into(),
        namespace: "models".into(),
        spec: Some(DeploymentSpec::test(name).into()),
    })
    .await
    .map(|_| ())
}

async fn create_user(admin: &mut Control, name: &str, gateway_admin: bool) {
    admin
        .create_user(proto::CreateUserRequest {
            name: name.into(),
            kind: proto::UserKind::User as i32,
            admin: gateway_admin,
        })
        .await
        .unwrap();
}

async fn create_group(admin: &mut Control, name: &str, members: &[&str]) {
    admin
        .create_group(proto::CreateGroupRequest { name: name.into() })
        .await
        .unwrap();
    for m in members {
        admin
            .add_group_member(proto::GroupMemberRequest {
                group: name.into(),
                user: (*m).into(),
            })
            .await
            .unwrap();
    }
}

async fn grant(admin: &mut Control, deployer: &str, group: &str, role: u8) {
    admin
        .grant_deployer(proto::GrantDeployerRequest {
            deployer: deployer.into(),
            group: group.into(),
            role: role_of(role) as i32,
        })
        .await
        .unwrap();
}

/// A key of `user`, made by the admin; returns `(id, secret)`.
async fn key_of(admin: &mut Control, user: &str) -> (String, String) {
    let created = admin
        .create_api_key(proto::CreateApiKeyRequest {
            user: user.into(),
            expires_in_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    (created.key.unwrap().id, created.secret)
}

/// What every case's calls act on, made by the admin beforehand so that each call can
/// succeed when allowed: deployer `d` with deployment `iris`, and per case the objects
/// its mutating calls remove.
async fn prepare(admin: &mut Control, url: &str, case: Case) -> Control {
    let n = case.name;
    let user = format!("u-{n}");
    create_user(admin, &user, case.gateway_admin).await;
    create_group(admin, &format!("g-{n}"), &[&user]).await;
    // The deployer DeleteDeployer removes, with the same grant as `d`.
    admin
        .create_deployer(proto::CreateDeployerRequest {
            name: format!("x-{n}"),
            ..Default::default()
        })
        .await
        .unwrap();
    // The source of PromoteDeployment: visible to every case, so that only the role on
    // the target decides.
    grant(admin, "src", &format!("g-{n}"), 1).await;
    if case.role > 0 {
        grant(admin, "d", &format!("g-{n}"), case.role).await;
        grant(admin, &format!("x-{n}"), &format!("g-{n}"), case.role).await;
    }
    create_deployment(admin, "d", &format!("del-{n}"))
        .await
        .unwrap();
    create_user(admin, &format!("victim-{n}"), false).await;
    create_group(admin, &format!("tmp-{n}"), &[]).await;
    create_group(admin, &format!("add-{n}"), &[]).await;
    create_group(admin, &format!("rm-{n}"), &["other"]).await;
    create_group(admin, &format!("revoke-{n}"), &[]).await;
    grant(admin, "d", &format!("revoke-{n}"), 1).await;
    for stage in [format!("tmp-{n}"), format!("ren-{n}")] {
        admin
            .create_stage(proto::CreateStageRequest {
                name: stage,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let (_, secret) = key_of(admin, &user).await;
    control_client(url, &secret)
}

/// Drops an answer: the matrix looks only at whether a call was allowed.
fn ok<T>(_: T) {}

/// Calls `rpc` as the case's user; `other_key` is a key of user `other` to delete.
/// A URL hook on deployer `d`, added by the admin for a case's RemoveHook; its ID.
async fn spare_hook(admin: &mut Control) -> u64 {
    admin
        .add_hook(proto::AddHookRequest {
            deployer: "d".into(),
            phase: proto::HookPhase::Post as i32,
            target: Some(proto::add_hook_request::Target::Url(
                "http://127.0.0.1:9/spare".into(),
            )),
            timeout_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Calls `rpc` as the case's user; `other_key` is a key of user `other` to delete,
/// `hook` a hook of `d` to remove.
async fn call(
    rpc: &str,
    c: &mut Control,
    case: Case,
    other_key: &str,
    hook: u64,
) -> Result<(), Status> {
    let n = case.name;
    match rpc {
        "CreateDeployer" => c
            .create_deployer(proto::CreateDeployerRequest {
                name: format!("new-{n}"),
                ..Default::default()
            })
            .await
            .map(ok),
        "ListDeployers" => c
            .list_deployers(proto::ListDeployersRequest {})
            .await
            .map(ok),
        "GetDeployer" => c
            .get_deployer(proto::GetDeployerRequest {
                deployer: "d".into(),
            })
            .await
            .map(ok),
        "DeleteDeployer" => c
            .delete_deployer(proto::DeleteDeployerRequest {
                deployer: format!("x-{n}"),
                mode: proto::DeleteMode::Unspecified as i32,
            })
            .await
            .map(ok),
        "RotateDeployerToken" => c
            .rotate_deployer_token(proto::RotateDeployerTokenRequest {
                deployer: "d".into(),
                overlap_seconds: 60,
            })
            .await
            .map(ok),
        "CreateInstallCode" => c
            .create_install_code(proto::CreateInstallCodeRequest {
                deployer: "d".into(),
                ..Default::default()
            })
            .await
            .map(ok),
        "CreateDeployment" => create_deployment(c, "d", &format!("new-{n}")).await,
        "ListDeployments" => c
            .list_deployments(proto::ListDeploymentsRequest::default())
            .await
            .map(ok),
        "GetDeployment" => c.get_deployment(select("iris")).await.map(ok),
        "UpdateDeployment" => c
            .update_deployment(proto::UpdateDeploymentRequest {
                selector: Some(select("iris")),
                replicas: Some(u32::from(case.role) + 2),
                ..Default::default()
            })
            .await
            .map(ok),
        "DeleteDeployment" => c
            .delete_deployment(proto::DeleteDeploymentRequest {
                selector: Some(select(&format!("del-{n}"))),
            })
            .await
            .map(ok),
        "WatchDeploymentStatus" => c.watch_deployment_status(select("iris")).await.map(ok),
        // Allowed, it gets as far as asking the agent, which is not connected.
        "DeploymentLogs" => match c
            .deployment_logs(proto::DeploymentLogsRequest {
                selector: Some(select("iris")),
                container: "model".into(),
                ..Default::default()
            })
            .await
        {
            Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("no agent") => {
                Ok(())
            }
            other => other.map(ok),
        },
        "DescribeDeployment" => c.describe_deployment(select("iris")).await.map(ok),
        "GetVersion" => c.get_version(proto::GetVersionRequest {}).await.map(ok),
        "GetDeploymentHistory" => c.get_deployment_history(select("iris")).await.map(ok),
        "GetDeploymentRevision" => c
            .get_deployment_revision(proto::GetDeploymentRevisionRequest {
                selector: Some(select("iris")),
                number: 1,
            })
            .await
            .map(ok),
        "RollbackDeployment" => c
            .rollback_deployment(proto::RollbackDeploymentRequest {
                selector: Some(select("iris")),
                to_revision: 1,
            })
            .await
            .map(ok),
        "CreateUser" => c
            .create_user(proto::CreateUserRequest {
                name: format!("new-{n}"),
                ..Default::default()
            })
            .await
            .map(ok),
        "ListUsers" => c.list_users(proto::ListUsersRequest {}).await.map(ok),
        "DeleteUser" => c
            .delete_user(proto::DeleteUserRequest {
                name: format!("victim-{n}"),
            })
            .await
            .map(ok),
        "CreateApiKey" => c
            .create_api_key(proto::CreateApiKeyRequest {
                user: "other".into(),
                expires_in_seconds: 3600,
            })
            .await
            .map(ok),
        "ListApiKeys" => c
            .list_api_keys(proto::ListApiKeysRequest {
                user: "other".into(),
            })
            .await
            .map(ok),
        "DeleteApiKey" => c
            .delete_api_key(proto::DeleteApiKeyRequest {
                id: other_key.into(),
            })
            .await
            .map(ok),
        "CreateGroup" => c
            .create_group(proto::CreateGroupRequest {
                name: format!("new-{n}"),
            })
            .await
            .map(ok),
        "ListGroups" => c.list_groups(proto::ListGroupsRequest {}).await.map(ok),
        "DeleteGroup" => c
            .delete_group(proto::DeleteGroupRequest {
                name: format!("tmp-{n}"),
            })
            .await
            .map(ok),
        "AddGroupMember" => c
            .add_group_member(proto::GroupMemberRequest {
                group: format!("add-{n}"),
                user: "other".into(),
            })
            .await
            .map(ok),
        "RemoveGroupMember" => c
            .remove_group_member(proto::GroupMemberRequest {
                group: format!("rm-{n}"),
                user: "other".into(),
            })
            .await
            .map(ok),
        "GrantDeployer" => c
            .grant_deployer(proto::GrantDeployerRequest {
                deployer: "d".into(),
                group: "spare".into(),
                role: proto::DeployerRole::View as i32,
            })
            .await
            .map(ok),
        "RevokeDeployer" => c
            .revoke_deployer(proto::RevokeDeployerRequest {
                deployer: "d".into(),
                group: format!("revoke-{n}"),
            })
            .await
            .map(ok),
        "ListStages" => c.list_stages(proto::ListStagesRequest {}).await.map(ok),
        "CreateStage" => c
            .create_stage(proto::CreateStageRequest {
                name: format!("new-{n}"),
                ..Default::default()
            })
            .await
            .map(ok),
        "DeleteStage" => c
            .delete_stage(proto::DeleteStageRequest {
                name: format!("tmp-{n}"),
            })
            .await
            .map(ok),
        "RenameStage" => c
            .rename_stage(proto::RenameStageRequest {
                name: format!("ren-{n}"),
                new_name: format!("renamed-{n}"),
            })
            .await
            .map(ok),
        "UpdateStage" => c
            .update_stage(proto::UpdateStageRequest {
                name: "Test".into(),
                deploy_by: proto::DeployBy::Anyone as i32,
            })
            .await
            .map(ok),
        "UpdateDeployer" => c
            .update_deployer(proto::UpdateDeployerRequest {
                deployer: "d".into(),
                stage: Some("Development".into()),
            })
            .await
            .map(ok),
        "ListAudit" => c
            .list_audit(proto::ListAuditRequest::default())
            .await
            .map(ok),
        "SetDeployerRemap" => c
            .set_deployer_remap(proto::SetDeployerRemapRequest {
                deployer: "d".into(),
                set_secrets: vec![proto::SecretRemap {
                    from: format!("creds-{n}"),
                    to: "creds-prod".into(),
                }],
                ..Default::default()
            })
            .await
            .map(ok),
        "PromoteDeployment" => c
            .promote_deployment(proto::PromoteDeploymentRequest {
                selector: Some(proto::GetDeploymentRequest {
                    deployment: "promo".into(),
                    deployer: "src".into(),
                    ..Default::default()
                }),
                to_deployer: "d".into(),
            })
            .await
            .map(ok),
        "AddHook" => c
            .add_hook(proto::AddHookRequest {
                deployer: "d".into(),
                phase: proto::HookPhase::Post as i32,
                target: Some(proto::add_hook_request::Target::Url(format!(
                    "http://127.0.0.1:9/{n}"
                ))),
                timeout_ms: 0,
            })
            .await
            .map(ok),
        "ListHooks" => c
            .list_hooks(proto::ListHooksRequest {
                deployer: "d".into(),
            })
            .await
            .map(ok),
        "RemoveHook" => c
            .remove_hook(proto::RemoveHookRequest { id: hook })
            .await
            .map(ok),
        other => panic!("no call for RPC {other}: add one to the matrix"),
    }
}

/// The RPC names of ControlService in the proto.
fn proto_rpcs() -> BTreeSet<String> {
    let proto = include_str!("../proto/deployer/v1/deployer.proto");
    let service = proto.split("service ControlService {").nth(1).unwrap();
    let body = &service[..service.find("\n}").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l[..l.find('(').unwrap()].trim().to_string())
        .collect()
}

#[tokio::test]
async fn every_rpc_is_allowed_or_denied_per_role_as_the_table_says() {
    let table: BTreeSet<String> = TABLE.iter().map(|(r, _)| r.to_string()).collect();
    assert_eq!(
        table,
        proto_rpcs(),
        "the matrix walks every ControlService RPC"
    );

    let gw = TestGateway::start().await;
    let mut admin = gw.control();
    admin
        .create_deployer(proto::CreateDeployerRequest {
            name: "d".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    create_deployment(&mut admin, "d", "iris").await.unwrap();
    admin
        .create_deployer(proto::CreateDeployerRequest {
            name: "src".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    create_deployment(&mut admin, "src", "promo").await.unwrap();
    create_user(&mut admin, "other", false).await;
    create_group(&mut admin, "spare", &[]).await;

    let mut failures = Vec::new();
    for case in CASES {
        let mut c = prepare(&mut admin, &gw.url(), case).await;
        let (other_key, _) = key_of(&mut admin, "other").await;
        let hook = spare_hook(&mut admin).await;
        for (rpc, need) in TABLE {
            let want = expected(*need, case);
            let got = match call(rpc, &mut c, case, &other_key, hook).await {
                Ok(()) => Outcome::Allowed,
                // Exactly what a missing deployer answers.
                Err(s) if s.code() == Code::NotFound && s.message() == "deployer d not found" => {
                    Outcome::NotFound
                }
                // A hook is named by its ID alone: one of an invisible deployer is a
                // missing hook.
                Err(s)
                    if rpc == &"RemoveHook"
                        && s.code() == Code::NotFound
                        && s.message().starts_with(&format!("hook {hook} not found")) =>
                {
                    Outcome::NotFound
                }
                Err(s) if s.code() == Code::PermissionDenied => Outcome::PermissionDenied,
                Err(s) => {
                    failures.push(format!(
                        "{rpc} as {}: unexpected {:?}: {}",
                        case.name,
                        s.code(),
                        s.message()
                    ));
                    continue;
                }
            };
            if got != want {
                failures.push(format!(
                    "{rpc} as {}: want {want:?}, got {got:?}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn without_view_a_deployer_is_invisible_and_a_low_role_hears_which_is_missing() {
    let gw = TestGateway::start().await;
    let mut admin = gw.control();
    for name in ["prod", "hidden"] {
        admin
            .create_deployer(proto::CreateDeployerRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        create_deployment(&mut admin, name, "iris").await.unwrap();
    }
    create_user(&mut admin, "alice", false).await;
    create_group(&mut admin, "ml", &["alice"]).await;
    grant(&mut admin, "prod", "ml", 1).await;
    let (_, secret) = key_of(&mut admin, "alice").await;
    let mut alice = control_client(&gw.url(), &secret);

    let deployers = alice
        .list_deployers(proto::ListDeployersRequest {})
        .await
        .unwrap()
        .into_inner()
        .deployers;
    let names: Vec<&str> = deployers.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["prod"]);
    let deployments = alice
        .list_deployments(proto::ListDeploymentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .deployments;
    let of: Vec<&str> = deployments
        .iter()
        .map(|d| d.deployer_name.as_str())
        .collect();
    assert_eq!(
        of,
        ["prod"],
        "the hidden deployer's deployment is not listed"
    );

    // Hidden answers exactly as a deployer that does not exist.
    let get = |name: &str| proto::GetDeployerRequest {
        deployer: name.into(),
    };
    let hidden = alice.get_deployer(get("hidden")).await.unwrap_err();
    let missing = alice.get_deployer(get("missing")).await.unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(hidden.message(), "deployer hidden not found");
    assert_eq!(missing.message(), "deployer missing not found");
    let by_name = alice
        .get_deployment(proto::GetDeploymentRequest {
            deployment: "iris".into(),
            deployer: "hidden".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(by_name.message(), "deployer hidden not found");
    // Its deployment by ID is not there either.
    let hidden_iris = admin
        .list_deployments(proto::ListDeploymentsRequest {
            deployer: "hidden".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deployments[0]
        .deployment
        .clone()
        .unwrap()
        .id;
    let by_id = alice
        .get_deployment(proto::GetDeploymentRequest {
            deployment: hidden_iris.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(by_id.code(), Code::NotFound);
    assert_eq!(
        by_id.message(),
        format!("deployment {hidden_iris} not found")
    );

    let refused = alice
        .update_deployment(proto::UpdateDeploymentRequest {
            selector: Some(proto::GetDeploymentRequest {
                deployment: "iris".into(),
                deployer: "prod".into(),
                ..Default::default()
            }),
            replicas: Some(3),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "updating deployments on deployer 'prod' needs the Deploy role; you have View (groups: ml)"
    );
    // A revoked role takes effect at once: prod disappears, and a status watch opened
    // before ends as if the deployment were not there.
    let mut watch = alice
        .watch_deployment_status(proto::GetDeploymentRequest {
            deployment: "iris".into(),
            deployer: "prod".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("the first view");
    admin
        .revoke_deployer(proto::RevokeDeployerRequest {
            deployer: "prod".into(),
            group: "ml".into(),
        })
        .await
        .unwrap();
    let gone = alice.get_deployer(get("prod")).await.unwrap_err();
    assert_eq!(gone.message(), "deployer prod not found");
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(30), watch.message())
            .await
            .expect("the watch ends after the revoke")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch closed without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::NotFound);
    // The admin's GetDeployer shows what is granted.
    grant(&mut admin, "prod", "ml", 2).await;
    let prod = admin.get_deployer(get("prod")).await.unwrap().into_inner();
    assert_eq!(
        prod.grants,
        [proto::DeployerGrant {
            group: "ml".into(),
            role: proto::DeployerRole::Deploy as i32
        }]
    );
}

#[tokio::test]
async fn expired_and_deleted_keys_are_refused_without_saying_more() {
    let gw = TestGateway::start().await;
    let mut admin = gw.control();
    create_user(&mut admin, "alice", false).await;
    let created = admin
        .create_api_key(proto::CreateApiKeyRequest {
            user: "alice".into(),
            expires_in_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!created.key.as_ref().unwrap().expires_at.is_empty());
    let mut alice = control_client(&gw.url(), &created.secret);
    // Polls until the second has passed: no timed assertion, just a wait for expiry.
    let status = ds_test_support::eventually("the key to expire", || {
        let mut alice = alice.clone();
        async move { alice.get_version(proto::GetVersionRequest {}).await.err() }
    })
    .await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "API key expired");
    assert!(!status.message().contains(&created.secret));

    let (id, secret) = key_of(&mut admin, "alice").await;
    alice = control_client(&gw.url(), &secret);
    alice
        .get_version(proto::GetVersionRequest {})
        .await
        .unwrap();

    // Own keys need no admin: alice makes a second one, lists only hers, removes it.
    let own = alice
        .create_api_key(proto::CreateApiKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(own.user, "alice");
    let mine = alice
        .list_api_keys(proto::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(mine.iter().all(|k| k.user == "alice"), "{mine:?}");
    assert!(mine.iter().any(|k| k.id == own.id) && mine.iter().any(|k| k.id == id));
    alice
        .delete_api_key(proto::DeleteApiKeyRequest { id: own.id })
        .await
        .unwrap();
    // Not the admin's key, though.
    let admin_key_id = gw.admin_key.split('_').nth(1).unwrap().to_string();
    let refused = alice
        .delete_api_key(proto::DeleteApiKeyRequest { id: admin_key_id })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "deleting API keys of other users needs a gateway admin; alice is not one (no groups)"
    );
    admin
        .delete_api_key(proto::DeleteApiKeyRequest { id })
        .await
        .unwrap();
    let status = alice
        .get_version(proto::GetVersionRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "invalid API key");

    // Bad input changes nothing.
    let bad = admin
        .create_api_key(proto::CreateApiKeyRequest {
            user: "nobody".into(),
            expires_in_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::NotFound);
    assert_eq!(bad.message(), "user nobody not found");
    let dup = admin
        .create_user(proto::CreateUserRequest {
            name: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad_name = admin
        .create_group(proto::CreateGroupRequest {
            name: "ML Team".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), Code::InvalidArgument);
    assert!(
        bad_name.message().contains("name"),
        "{}",
        bad_name.message()
    );
    let last = admin
        .delete_user(proto::DeleteUserRequest {
            name: "admin".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(last.code(), Code::FailedPrecondition);
    assert!(
        last.message().contains("last gateway admin"),
        "{}",
        last.message()
    );
    admin
        .get_version(proto::GetVersionRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_of_the_release_before_teams_keeps_its_admin_key() {
    let mut gw = TestGateway::start().await;
    gw.stop().await;
    // As that release left it: api_keys(id, hash, created_at), no users or groups.
    let db = gw.dir().join("gateway.db");
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE api_keys_old AS SELECT id, hash, created_at FROM api_keys; \
             DROP TABLE deployer_grants; DROP TABLE group_members; DROP TABLE user_groups; \
             DROP TABLE api_keys; DROP TABLE users; \
             ALTER TABLE api_keys_old RENAME TO api_keys; \
             DELETE FROM _sqlx_migrations WHERE description = 'teams'",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    gw.restart().await;
    let mut admin = gw.control();
    let keys = admin
        .list_api_keys(proto::ListApiKeysRequest::default())
        .await
        .expect("the old admin key still works")
        .into_inner()
        .keys;
    let id = gw.admin_key.split('_').nth(1).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].id.as_str(), keys[0].user.as_str()), (id, "admin"));
    let users = admin
        .list_users(proto::ListUsersRequest {})
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 1);
    assert!(users[0].name == "admin" && users[0].admin);
}

// === through the `ds` binary ===

fn ds_binary() -> PathBuf {
    std::env::var_os("DS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ds")))
}

/// `ds ARGS` against `gw` with `key`.
async fn ds(gw: &TestGateway, key: &str, args: &[&str]) -> Run {
    let config = gw.dir().join("ds-config.yaml");
    let mut cmd = cli::bare(&ds_binary(), &config, args);
    cmd.env("DS_GATEWAY", gw.url()).env("DS_API_KEY", key);
    cli::output(cmd, DEADLINE).await
}

#[tokio::test]
async fn a_user_sees_and_does_what_its_groups_roles_allow_through_the_cli() {
    let gw = TestGateway::start().await;
    let root = gw.admin_key.clone();
    for d in ["test-d", "dev-d", "third-d"] {
        ds(&gw, &root, &["deployer", "create", d, "-o", "json"])
            .await
            .ok();
    }
    ds(&gw, &root, &["user", "create", "alice"]).await.ok();
    ds(&gw, &root, &["group", "create", "ml"]).await.ok();
    ds(&gw, &root, &["group", "add-member", "ml", "alice"])
        .await
        .ok();
    ds(
        &gw,
        &root,
        &[
            "deployer", "grant", "test-d", "--group", "ml", "--role", "view",
        ],
    )
    .await
    .ok();
    ds(
        &gw,
        &root,
        &[
            "deployer", "grant", "dev-d", "--group", "ml", "--role", "deploy",
        ],
    )
    .await
    .ok();
    let create = |deployer: &'static str| {
        [
            "deployment",
            "create",
            "--model-name",
            "iris",
            "-d",
            deployer,
            "-i",
            "tensorflow/serving:2.15.0",
            "-o",
            "json",
        ]
    };
    ds(&gw, &root, &create("test-d")).await.ok();
    ds(&gw, &root, &create("third-d")).await.ok();
    let got = ds(&gw, &root, &["deployer", "get", "test-d"]).await;
    assert!(got.ok().contains("ml=view"), "GRANTS: {}", got.stdout);

    let key = ds(
        &gw,
        &root,
        &[
            "apikey",
            "create",
            "--user",
            "alice",
            "--expires",
            "90d",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    let alice = key["secret"].as_str().unwrap().to_string();
    assert_eq!(key["user"], "alice");
    assert!(key["expires_at"].is_string(), "{key}");
    let listed = ds(
        &gw,
        &root,
        &["apikey", "ls", "--user", "alice", "-o", "json"],
    )
    .await
    .json();
    assert_eq!(listed[0]["id"], key["id"]);
    assert!(
        !listed.to_string().contains(&alice),
        "lists never show the secret"
    );

    // View on test-d: lists and gets it, may not create there.
    let deployments = ds(&gw, &alice, &["deployment", "ls", "-o", "json"])
        .await
        .json();
    let of: Vec<&str> = deployments
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deployer"].as_str().unwrap())
        .collect();
    assert_eq!(of, ["test-d"], "{deployments}");
    ds(&gw, &alice, &["deployment", "get", "iris", "-d", "test-d"])
        .await
        .ok();
    ds(&gw, &alice, &["deployer", "get", "test-d"]).await.ok();
    let refused = ds(&gw, &alice, &create("test-d")).await;
    assert_eq!(
        refused.one_line_error(),
        "error: permission denied: creating deployments on deployer 'test-d' needs the Deploy role; you have View (groups: ml)"
    );

    // Deploy on dev-d: create, update, delete.
    ds(&gw, &alice, &create("dev-d")).await.ok();
    ds(
        &gw,
        &alice,
        &[
            "deployment",
            "update",
            "iris",
            "-d",
            "dev-d",
            "--replicas",
            "2",
        ],
    )
    .await
    .ok();
    let history = ds(
        &gw,
        &alice,
        &["deployment", "history", "iris", "-d", "dev-d", "-o", "json"],
    )
    .await
    .json();
    let by = format!("alice (key {})", key["id"].as_str().unwrap());
    assert_eq!(history[1]["by"], by, "{history}");
    ds(&gw, &alice, &["deployment", "rm", "iris", "-d", "dev-d"])
        .await
        .ok();

    // third-d does not exist for alice.
    let deployers = ds(&gw, &alice, &["deployer", "ls", "-o", "json"])
        .await
        .json();
    let names: Vec<&str> = deployers
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev-d", "test-d"]);
    let hidden = ds(&gw, &alice, &["deployer", "get", "third-d"]).await;
    assert_eq!(hidden.one_line_error(), "error: deployer third-d not found");
    let hidden = ds(&gw, &alice, &["deployment", "get", "iris", "-d", "third-d"]).await;
    assert_eq!(hidden.one_line_error(), "error: deployer third-d not found");
    // Nor may alice manage users.
    let refused = ds(&gw, &alice, &["user", "create", "mallory"]).await;
    assert_eq!(
        refused.one_line_error(),
        "error: permission denied: creating users needs a gateway admin; alice is not one (groups: ml)"
    );

    // Bad input: a clear error naming the flag, nothing changed.
    let bad = ds(
        &gw,
        &root,
        &[
            "deployer", "grant", "dev-d", "--group", "ml", "--role", "owner",
        ],
    )
    .await;
    assert!(bad.failed().contains("--role"), "{}", bad.stderr);
    let bad = ds(
        &gw,
        &root,
        &[
            "deployer", "grant", "dev-d", "--group", "nobody", "--role", "view",
        ],
    )
    .await;
    assert_eq!(bad.one_line_error(), "error: group nobody not found");
    let bad = ds(&gw, &root, &["apikey", "create", "--expires", "soon"]).await;
    assert!(bad.failed().contains("--expires"), "{}", bad.stderr);
    let bad = ds(&gw, &root, &["user", "rm", "admin"]).await;
    assert!(
        bad.one_line_error().contains("last gateway admin"),
        "{}",
        bad.stderr
    );
    let users = ds(&gw, &root, &["user", "ls", "-o", "json"]).await.json();
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");

    // An expired key is refused saying so (polled until its second has passed).
    let short = ds(
        &gw,
        &root,
        &[
            "apikey",
            "create",
            "--user",
            "alice",
            "--expires",
            "1s",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    let short = short["secret"].as_str().unwrap().to_string();
    let refused = ds_test_support::eventually("the key to expire", || {
        let (gw, short) = (&gw, &short);
        async move {
            let run = ds(gw, short, &["deployer", "ls"]).await;
            (run.code != Some(0)).then_some(run)
        }
    })
    .await;
    assert!(
        refused
            .one_line_error()
            .starts_with("error: the API key has expired"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains(&short));
}
