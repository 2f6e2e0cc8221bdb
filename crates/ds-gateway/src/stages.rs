//! The stage policy: who may create, change or delete deployments on the deployers of a
//! stage. A pure function, so that the rule is tested apart from any caller.

use super::store::{DeployBy, StageRecord};

/// Why the policy refuses a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "stage {stage} allows deployments by service accounts only (deploy-by service-accounts): \
     deploy with a service account's API key (e.g. from CI), or have an admin run \
     `ds stage update {stage} --deploy-by anyone`"
)]
pub struct Refusal {
    /// The stage whose policy refused.
    pub stage: String,
}

/// Whether a caller may change deployments on a deployer in `stage`.
///
/// # Errors
/// [`Refusal`] when the stage wants service accounts and the caller is a person.
pub fn may_deploy(stage: &StageRecord, caller_is_service_account: bool) -> Result<(), Refusal> {
    match stage.deploy_by {
        DeployBy::Anyone => Ok(()),
        DeployBy::ServiceAccounts if caller_is_service_account => Ok(()),
        DeployBy::ServiceAccounts => Err(Refusal {
            stage: stage.name.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(deploy_by: DeployBy) -> StageRecord {
        StageRecord {
            name: "Production".into(),
            position: 3,
            deploy_by,
            deployers: vec![],
        }
    }

    #[test]
    fn anyone_stages_take_everyone() {
        assert_eq!(may_deploy(&stage(DeployBy::Anyone), false), Ok(()));
        assert_eq!(may_deploy(&stage(DeployBy::Anyone), true), Ok(()));
    }

    #[test]
    fn service_account_stages_refuse_people_and_say_what_to_do() {
        assert_eq!(may_deploy(&stage(DeployBy::ServiceAccounts), true), Ok(()));
        let refusal = may_deploy(&stage(DeployBy::ServiceAccounts), false).unwrap_err();
        let message = refusal.to_string();
        assert!(message.contains("stage Production"), "{message}");
        assert!(message.contains("service account"), "{message}");
        assert!(
            message.contains("ds stage update Production --deploy-by anyone"),
            "{message}"
        );
    }
}
