//! Validation of autoscaling (the HorizontalPodAutoscaler's bounds and CPU target) and of
//! the disruption budget (issue 16): the rules the API server and the autoscaler would
//! apply later, said at `ds deployment create` with the field, the value and the rule.

use super::{MAX_REPLICAS, ValidationError};
use crate::spec::DeploymentSpec;

/// Highest CPU utilization target, in percent of the request.
pub const MAX_TARGET_CPU_PERCENT: u32 = 100;

/// Checks the autoscaling and disruption-budget options of `spec`.
pub(super) fn check(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    check_autoscaling(spec)?;
    check_max_unavailable(spec)
}

fn check_autoscaling(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    if !spec.autoscaled() {
        // Half an autoscaler would be silently ignored: say what is missing.
        if spec.min_replicas > 0 {
            return Err(ValidationError::new(
                "min_replicas",
                spec.min_replicas.to_string(),
                "is the autoscaler's minimum, but max_replicas is not set: give max_replicas too",
            ));
        }
        if let Some(target) = spec.target_cpu_percent {
            return Err(ValidationError::new(
                "target_cpu_percent",
                target.to_string(),
                "is the autoscaler's CPU target, but max_replicas is not set: give max_replicas too",
            ));
        }
        return Ok(());
    }
    if spec.min_replicas == 0 {
        return Err(ValidationError::new(
            "min_replicas",
            "0",
            "must be at least 1 (an autoscaler cannot scale a deployment up from zero pods)",
        ));
    }
    if spec.max_replicas > MAX_REPLICAS {
        return Err(ValidationError::new(
            "max_replicas",
            spec.max_replicas.to_string(),
            format!("must be between 1 and {MAX_REPLICAS}"),
        ));
    }
    if spec.min_replicas > spec.max_replicas {
        return Err(ValidationError::new(
            "min_replicas",
            spec.min_replicas.to_string(),
            format!(
                "must not be above max_replicas ({}): min_replicas > max_replicas leaves the autoscaler no replica count to choose",
                spec.max_replicas
            ),
        ));
    }
    if let Some(target) = spec.target_cpu_percent
        && !(1..=MAX_TARGET_CPU_PERCENT).contains(&target)
    {
        return Err(ValidationError::new(
            "target_cpu_percent",
            target.to_string(),
            format!(
                "must be between 1 and {MAX_TARGET_CPU_PERCENT} (percent of the model container's CPU request)"
            ),
        ));
    }
    if spec
        .resources
        .cpu_request
        .as_deref()
        .is_none_or(str::is_empty)
    {
        // The autoscaler measures utilization against the request; without one it never
        // scales and only reports FailedGetResourceMetric.
        return Err(ValidationError::new(
            "resources.cpu_request",
            "",
            "is needed for autoscaling: the CPU target is a percentage of the model container's CPU request",
        ));
    }
    Ok(())
}

fn check_max_unavailable(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    let Some(n) = spec.max_unavailable else {
        return Ok(());
    };
    if n == 0 {
        return Err(ValidationError::new(
            "max_unavailable",
            "0",
            "must be at least 1: a budget of 0 pods would block every node drain",
        ));
    }
    if n > MAX_REPLICAS {
        return Err(ValidationError::new(
            "max_unavailable",
            n.to_string(),
            format!("must be between 1 and {MAX_REPLICAS}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::spec::DeploymentSpec;
    use crate::validate::{ValidationError, validate_deployment};

    /// An autoscaled spec that is valid: 2 to 5 replicas, a CPU request.
    fn scaled() -> DeploymentSpec {
        let mut s = with_cpu(DeploymentSpec::test("iris"));
        s.min_replicas = 2;
        s.max_replicas = 5;
        s
    }

    fn with_cpu(mut s: DeploymentSpec) -> DeploymentSpec {
        s.resources.cpu_request = Some("500m".into());
        s
    }

    fn with(f: impl FnOnce(&mut DeploymentSpec)) -> DeploymentSpec {
        let mut s = scaled();
        f(&mut s);
        s
    }

    fn rejected(spec: &DeploymentSpec, field: &str) -> ValidationError {
        let err = validate_deployment("iris", "default", spec)
            .expect_err("the spec should have been rejected");
        assert_eq!(err.field, field, "wrong field in {err}");
        assert!(err.to_string().contains(field), "{err}");
        err
    }

    fn ok(spec: &DeploymentSpec) {
        validate_deployment("iris", "default", spec).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_sound_autoscaler_and_budget_are_accepted() {
        ok(&scaled());
        ok(&with(|s| {
            s.min_replicas = 5;
            s.target_cpu_percent = Some(1);
            s.max_unavailable = Some(2);
        }));
        ok(&with(|s| s.target_cpu_percent = Some(100)));
        ok(&DeploymentSpec::test("iris").replicas(3));
    }

    #[test]
    fn min_above_max_is_refused_naming_the_rule() {
        let err = rejected(
            &with(|s| {
                s.min_replicas = 6;
                s.max_replicas = 3;
            }),
            "min_replicas",
        );
        assert!(err.rule.contains("max_replicas (3)"), "{err}");
        assert!(err.rule.contains("min_replicas > max_replicas"), "{err}");
        assert_eq!(err.value, "6");
    }

    #[test]
    fn min_must_be_at_least_one_and_max_bounded() {
        let err = rejected(&with(|s| s.min_replicas = 0), "min_replicas");
        assert!(err.rule.contains("at least 1"), "{err}");
        let err = rejected(&with(|s| s.max_replicas = 1001), "max_replicas");
        assert!(err.rule.contains("1000"), "{err}");
    }

    #[test]
    fn target_cpu_is_a_percentage_from_1_to_100() {
        for bad in [0, 101, 500] {
            let err = rejected(
                &with(|s| s.target_cpu_percent = Some(bad)),
                "target_cpu_percent",
            );
            assert!(err.rule.contains("between 1 and 100"), "{err}");
            assert_eq!(err.value, bad.to_string());
        }
    }

    #[test]
    fn half_an_autoscaler_is_refused() {
        let mut s = with_cpu(DeploymentSpec::test("iris"));
        s.min_replicas = 2;
        let err = rejected(&s, "min_replicas");
        assert!(err.rule.contains("give max_replicas too"), "{err}");
        let mut s = with_cpu(DeploymentSpec::test("iris"));
        s.target_cpu_percent = Some(50);
        rejected(&s, "target_cpu_percent");
    }

    #[test]
    fn autoscaling_needs_a_cpu_request() {
        let mut s = scaled();
        s.resources.cpu_request = None;
        let err = rejected(&s, "resources.cpu_request");
        assert!(err.rule.contains("autoscaling"), "{err}");
    }

    #[test]
    fn max_unavailable_is_at_least_one() {
        let s = DeploymentSpec::test("iris").replicas(3);
        let err = rejected(
            &DeploymentSpec {
                max_unavailable: Some(0),
                ..s.clone()
            },
            "max_unavailable",
        );
        assert!(err.rule.contains("block every node drain"), "{err}");
        rejected(
            &DeploymentSpec {
                max_unavailable: Some(1001),
                ..s
            },
            "max_unavailable",
        );
    }
}
