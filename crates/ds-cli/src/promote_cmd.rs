//! `ds deployment promote` (one deployer, or every deployer of a stage in turn) and the
//! flags of `ds deployer remap`.

use super::client::{Control, request, status_error};
use super::inspect_cmd::{RemappedView, remapped_line};
use super::output::{OutputFormat, print};
use super::{CliError, PromoteArgs, RemapArgs, wait};
use ds_core::proto;
use ds_core::remap::{EnvRemap, Remap, SecretRemap};
use serde::Serialize;

/// What `-o json|yaml` prints for each target of a promotion.
#[derive(Serialize)]
struct TargetResult {
    deployer: String,
    /// `promoted`, `unchanged` (it had that spec already), `failed` or `not-run`.
    outcome: &'static str,
    /// Whether it was created on the target (else the one there was changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
    /// The target deployment's deployer revision of the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_revision: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    remapped: Vec<RemappedView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl TargetResult {
    fn pending(deployer: &str) -> Self {
        Self {
            deployer: deployer.to_string(),
            outcome: "not-run",
            created: None,
            revision: None,
            source_revision: None,
            remapped: Vec::new(),
            error: None,
        }
    }
}

/// `ds deployment promote NAME (--to DEPLOYER | --to-stage STAGE) [--wait]`.
///
/// # Errors
/// The source or targets cannot be found, or a target refuses or fails: then
/// [`CliError::PromotionStopped`] names it, with the targets done and not run.
pub async fn promote(
    control: &mut Control,
    url: &str,
    args: &PromoteArgs,
    format: OutputFormat,
) -> Result<(), CliError> {
    let err = |status| status_error(status, url);
    // One source for every target: by ID, as the name is on more deployers once
    // promoted to the first.
    let source = control
        .get_deployment(request(super::deployment_cmd::selector(&args.select)))
        .await
        .map_err(err)?
        .into_inner();
    let deployment = source.deployment.clone().unwrap_or_default();
    let shown = format!("{}/{}", deployment.namespace, deployment.name);
    let targets = match (&args.to, &args.to_stage) {
        (Some(to), _) => vec![to.clone()],
        (None, Some(stage)) => stage_targets(control, url, stage, &source, &shown).await?,
        (None, None) => unreachable!("clap requires --to or --to-stage"),
    };
    let mut results: Vec<TargetResult> = targets.iter().map(|t| TargetResult::pending(t)).collect();
    let mut failure = None;
    for (i, target) in targets.iter().enumerate() {
        match promote_one(control, url, args, format, &deployment, &shown, target).await {
            Ok(done) => results[i] = done,
            Err(e) => {
                results[i].outcome = "failed";
                results[i].error = Some(e.to_string());
                failure = Some((i, e));
                break;
            }
        }
    }
    if !format.is_human() {
        print(format, &results, String::new)?;
    }
    let Some((i, e)) = failure else {
        return Ok(());
    };
    let names = |r: &[TargetResult]| {
        if r.is_empty() {
            "none".to_string()
        } else {
            r.iter()
                .map(|t| t.deployer.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    Err(CliError::PromotionStopped {
        deployment: shown,
        target: targets[i].clone(),
        error: e.to_string(),
        done: names(&results[..i]),
        not_run: names(&results[i + 1..]),
    })
}

/// Promotes to one target, then with `--wait` follows it until Available.
async fn promote_one(
    control: &mut Control,
    url: &str,
    args: &PromoteArgs,
    format: OutputFormat,
    source: &proto::Deployment,
    shown: &str,
    target: &str,
) -> Result<TargetResult, CliError> {
    let answer = control
        .promote_deployment(request(proto::PromoteDeploymentRequest {
            selector: Some(proto::GetDeploymentRequest {
                deployment: source.id.clone(),
                ..Default::default()
            }),
            to_deployer: target.to_string(),
        }))
        .await
        .map_err(|s| status_error(s, url))?
        .into_inner();
    let view = answer.view.clone().unwrap_or_default();
    let unchanged = view.changed == Some(false);
    let remapped: Vec<RemappedView> = answer.remapped.iter().map(RemappedView::from).collect();
    let revision = view
        .deployment
        .as_ref()
        .map_or(0, |d| d.revision_of_last_change);
    if format.is_human() {
        let what = match (answer.created, unchanged) {
            (true, _) => "created",
            (false, true) => "already has that spec: no change",
            (false, false) => "updated",
        };
        let mut line = format!(
            "deployment {shown} promoted to {target} ({what}, revision {revision}, from source revision {})",
            answer.source_revision
        );
        if !remapped.is_empty() {
            line.push_str(&format!("; remapped: {}", remapped_line(&remapped)));
        }
        println!("{line}");
    }
    if args.wait.wait && !unchanged {
        if format.is_human() {
            eprintln!("waiting for deployment {shown} on {target}…");
        }
        wait::until_available(control, url, &view, args.wait.timeout).await?;
    }
    Ok(TargetResult {
        deployer: target.to_string(),
        outcome: if unchanged { "unchanged" } else { "promoted" },
        created: Some(answer.created),
        revision: Some(revision),
        source_revision: Some(answer.source_revision),
        remapped,
        error: None,
    })
}

/// The deployers of `stage` the caller can see, by name, without the source's own.
async fn stage_targets(
    control: &mut Control,
    url: &str,
    stage: &str,
    source: &proto::DeploymentView,
    shown: &str,
) -> Result<Vec<String>, CliError> {
    let err = |status| status_error(status, url);
    let stages = control
        .list_stages(request(proto::ListStagesRequest {}))
        .await
        .map_err(err)?
        .into_inner()
        .stages;
    if !stages.iter().any(|s| s.name == stage) {
        let known: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        return Err(CliError::BadFlag {
            flag: "--to-stage".into(),
            value: stage.to_string(),
            reason: format!(
                "unknown stage; one of: {} (see `ds stage ls`)",
                known.join(", ")
            ),
        });
    }
    let source_deployer = source
        .deployment
        .as_ref()
        .map(|d| d.deployer_id.clone())
        .unwrap_or_default();
    let mut names: Vec<String> = control
        .list_deployers(request(proto::ListDeployersRequest {}))
        .await
        .map_err(err)?
        .into_inner()
        .deployers
        .into_iter()
        .filter(|d| d.stage == stage && d.id != source_deployer)
        .map(|d| d.name)
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(CliError::NoPromotionTarget {
            stage: stage.to_string(),
            deployment: shown.to_string(),
            why: format!(
                ": none you can see is in it besides {} (see `ds deployer ls`)",
                source.deployer_name
            ),
        });
    }
    Ok(names)
}

/// The edit `ds deployer remap` asks for, checked before dialing: each flag's syntax,
/// then the entries added by the map's rules (naming the flag).
///
/// # Errors
/// [`CliError::BadFlag`] for a value without its separators, [`CliError::Invalid`] for
/// an entry that breaks a rule, [`CliError::NothingToRemap`] for no flag at all.
pub fn remap_request(args: &RemapArgs) -> Result<proto::SetDeployerRemapRequest, CliError> {
    if args.env.is_empty()
        && args.secret.is_empty()
        && args.remove_env.is_empty()
        && args.remove_secret.is_empty()
        && !args.clear
    {
        return Err(CliError::NothingToRemap(args.deployer.clone()));
    }
    let bad = |flag: &str, value: &str, reason: &str| CliError::BadFlag {
        flag: flag.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let mut added = Remap::default();
    for text in &args.env {
        let (name, rest) = text.split_once('=').ok_or_else(|| {
            bad(
                "--env",
                text,
                "expected NAME=FROM:TO, e.g. DB_CONN=sql-dev:sql-prod",
            )
        })?;
        let (from, to) = rest.split_once(':').ok_or_else(|| {
            bad(
                "--env",
                text,
                "expected NAME=FROM:TO, e.g. DB_CONN=sql-dev:sql-prod",
            )
        })?;
        added.env.push(EnvRemap {
            name: name.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        });
    }
    for text in &args.secret {
        let (from, to) = text.split_once(':').ok_or_else(|| {
            bad(
                "--secret",
                text,
                "expected FROM:TO, e.g. creds-dev:creds-prod",
            )
        })?;
        added.secrets.push(SecretRemap {
            from: from.to_string(),
            to: to.to_string(),
        });
    }
    ds_core::remap::validate(&added)?;
    Ok(proto::SetDeployerRemapRequest {
        deployer: args.deployer.clone(),
        set_env: added.env.into_iter().map(Into::into).collect(),
        set_secrets: added.secrets.into_iter().map(Into::into).collect(),
        remove_env: args.remove_env.clone(),
        remove_secrets: args.remove_secret.clone(),
        clear: args.clear,
    })
}
