//! The update semantics of autoscaling and the disruption budget (issue 16): an absent
//! field leaves its option as it is; `max_replicas` 0 turns autoscaling off altogether.

use ds_core::DeploymentSpec;
use ds_core::proto::UpdateDeploymentRequest;

/// Applies the request's autoscaling and budget fields to `spec`.
pub(crate) fn apply(spec: &mut DeploymentSpec, req: &UpdateDeploymentRequest) {
    if let Some(min) = req.min_replicas {
        spec.min_replicas = min;
    }
    if let Some(target) = req.target_cpu_percent {
        spec.target_cpu_percent = Some(target);
    }
    match req.max_replicas {
        // Off: no half autoscaler is left behind, and `replicas` applies again.
        Some(0) => {
            spec.max_replicas = 0;
            spec.min_replicas = 0;
            spec.target_cpu_percent = None;
        }
        Some(max) => {
            spec.max_replicas = max;
            // Turned on without a minimum: the autoscaler's own default, one pod.
            if spec.min_replicas == 0 && req.min_replicas.is_none() {
                spec.min_replicas = 1;
            }
        }
        None => {}
    }
    if let Some(n) = req.max_unavailable {
        spec.max_unavailable = Some(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled() -> DeploymentSpec {
        let mut s = DeploymentSpec::test("iris").replicas(3);
        s.min_replicas = 2;
        s.max_replicas = 6;
        s.target_cpu_percent = Some(60);
        s.max_unavailable = Some(2);
        s
    }

    #[test]
    fn absent_fields_leave_the_options_as_they_are() {
        let mut s = scaled();
        apply(&mut s, &UpdateDeploymentRequest::default());
        assert_eq!(s, scaled());
    }

    #[test]
    fn max_zero_turns_autoscaling_off_and_keeps_replicas_and_the_budget() {
        let mut s = scaled();
        apply(
            &mut s,
            &UpdateDeploymentRequest {
                max_replicas: Some(0),
                ..Default::default()
            },
        );
        assert!(!s.autoscaled());
        assert_eq!((s.min_replicas, s.target_cpu_percent), (0, None));
        assert_eq!((s.replicas, s.max_unavailable), (3, Some(2)));
    }

    #[test]
    fn turning_on_without_a_minimum_means_one() {
        let mut s = DeploymentSpec::test("iris");
        apply(
            &mut s,
            &UpdateDeploymentRequest {
                max_replicas: Some(4),
                ..Default::default()
            },
        );
        assert_eq!((s.min_replicas, s.max_replicas), (1, 4));
        // A minimum given with it, or already set, is kept.
        let mut s = scaled();
        apply(
            &mut s,
            &UpdateDeploymentRequest {
                max_replicas: Some(10),
                target_cpu_percent: Some(80),
                max_unavailable: Some(1),
                ..Default::default()
            },
        );
        assert_eq!((s.min_replicas, s.max_replicas), (2, 10));
        assert_eq!(
            (s.target_cpu_percent, s.max_unavailable),
            (Some(80), Some(1))
        );
    }
}
