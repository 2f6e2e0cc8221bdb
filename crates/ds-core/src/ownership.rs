//! The labels that mark what a deployer's agent owns in its cluster: one definition for
//! the agent that writes and selects by them, and for the gateway and the CLI that tell a
//! user how to find (or remove) those objects by hand.

/// `app.kubernetes.io/managed-by`: marks every object the agent writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "ds-deployer";
/// The owner label: the deployer ID (not a token hash: rotating a token orphans nothing).
pub const OWNER_LABEL: &str = "deployer.ds.dev/owner";

/// The label selector for everything one deployer owns: what the agent watches and lists.
pub fn owner_selector(deployer_id: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{OWNER_LABEL}={deployer_id}")
}

/// The `kubectl` command that deletes every object a deployer's agent wrote, in every
/// namespace: what is left to do by hand after the deployer was deleted with its objects
/// left in the cluster.
pub fn cleanup_command(deployer_id: &str) -> String {
    format!(
        "kubectl delete deployment,service,ingress -A -l {}",
        owner_selector(deployer_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cleanup_selects_by_managed_by_and_owner() {
        assert_eq!(
            cleanup_command("d-1"),
            "kubectl delete deployment,service,ingress -A -l \
             app.kubernetes.io/managed-by=ds-deployer,deployer.ds.dev/owner=d-1"
        );
    }
}
