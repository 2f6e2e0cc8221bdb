//! `ds stage ls|create|rm|rename|update`: the lifecycle stages deployers are in.

use super::client::{self, request, status_error};
use super::output::{self, StageView, print};
use super::{CliError, DeployByArg, StageArgs, StageCommand, config};
use ds_core::proto;
use serde::Serialize;

/// What `rm` prints with `-o json|yaml`.
#[derive(Serialize)]
struct Deleted<'a> {
    name: &'a str,
    deleted: bool,
}

fn deploy_by(arg: DeployByArg) -> i32 {
    match arg {
        DeployByArg::Anyone => proto::DeployBy::Anyone as i32,
        DeployByArg::ServiceAccounts => proto::DeployBy::ServiceAccounts as i32,
    }
}

/// Checks a stage name given as `flag` before dialing.
fn check_name(flag: &str, name: &str) -> Result<(), CliError> {
    ds_core::validate::validate_stage_name(flag, name).map_err(|e| CliError::InvalidFlag {
        flag: flag.to_string(),
        value: format!("{:?}", ds_core::validate::cut(name)),
        rule: e.rule,
    })
}

pub async fn run(args: StageArgs) -> Result<(), CliError> {
    let format = args.global.output;
    match &args.command {
        StageCommand::Create { name, .. } => check_name("NAME", name)?,
        StageCommand::Rename { new_name, .. } => check_name("NEW_NAME", new_name)?,
        _ => {}
    }
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let err = |status| status_error(status, &url);
    let one = |stage: proto::Stage| -> Result<(), CliError> {
        let view = StageView::from(&stage);
        print(format, &view, || output::stage_fields(&view))
    };
    match args.command {
        StageCommand::Ls => {
            let stages = control
                .list_stages(request(proto::ListStagesRequest {}))
                .await
                .map_err(err)?
                .into_inner()
                .stages;
            let views: Vec<StageView> = stages.iter().map(StageView::from).collect();
            print(format, &views, || output::stages_table(&views))?;
        }
        StageCommand::Create {
            name,
            after,
            position,
            deploy_by: by,
        } => {
            let stage = control
                .create_stage(request(proto::CreateStageRequest {
                    name,
                    after: after.unwrap_or_default(),
                    position: position.unwrap_or(0),
                    deploy_by: deploy_by(by),
                }))
                .await
                .map_err(err)?
                .into_inner();
            one(stage)?;
        }
        StageCommand::Rm { name } => {
            let deleted = control
                .delete_stage(request(proto::DeleteStageRequest { name }))
                .await
                .map_err(err)?
                .into_inner();
            print(
                format,
                &Deleted {
                    name: &deleted.name,
                    deleted: true,
                },
                || format!("stage {} deleted", deleted.name),
            )?;
        }
        StageCommand::Rename { name, new_name } => {
            let stage = control
                .rename_stage(request(proto::RenameStageRequest { name, new_name }))
                .await
                .map_err(err)?
                .into_inner();
            one(stage)?;
        }
        StageCommand::Update {
            name,
            deploy_by: by,
        } => {
            let stage = control
                .update_stage(request(proto::UpdateStageRequest {
                    name,
                    deploy_by: deploy_by(by),
                }))
                .await
                .map_err(err)?
                .into_inner();
            one(stage)?;
        }
    }
    Ok(())
}
