//! The autoscaling and disruption-budget flags of `ds deployment create` and `update`
//! (issue 16), and how `get` shows them.

use clap::Args;
use ds_core::DeploymentSpec;
use ds_core::proto;

/// `create`'s autoscaling and budget flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Autoscaling")]
pub struct ScaleCreateArgs {
    /// Fewest pods the autoscaler keeps (default 1); with --max-replicas.
    #[arg(long, value_name = "N")]
    pub min_replicas: Option<u32>,
    /// Autoscale up to this many pods (a HorizontalPodAutoscaler on CPU; needs --cpu);
    /// --replicas then applies only once autoscaling is turned off.
    #[arg(long, value_name = "M")]
    pub max_replicas: Option<u32>,
    /// CPU utilization the autoscaler aims at, in percent of --cpu (1-100, default 70).
    #[arg(long, value_name = "PERCENT")]
    pub target_cpu: Option<u32>,
    /// Pods a node drain may take down at once (the PodDisruptionBudget kept while the
    /// deployment runs more than one pod); default 1.
    #[arg(long, value_name = "N")]
    pub max_unavailable: Option<u32>,
}

/// `update`'s autoscaling and budget flags: absent flags leave their option as it is.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Autoscaling")]
pub struct ScaleUpdateArgs {
    /// New fewest pods of the autoscaler.
    #[arg(long, value_name = "N")]
    pub min_replicas: Option<u32>,
    /// New most pods of the autoscaler (turns autoscaling on, min 1 unless given); 0 turns
    /// it off.
    #[arg(long, value_name = "M")]
    pub max_replicas: Option<u32>,
    /// New CPU utilization target, in percent of --cpu (1-100).
    #[arg(long, value_name = "PERCENT")]
    pub target_cpu: Option<u32>,
    /// Turn autoscaling off: the autoscaler goes and --replicas applies again.
    #[arg(long, conflicts_with_all = ["max_replicas", "min_replicas", "target_cpu"])]
    pub no_autoscale: bool,
    /// New number of pods a node drain may take down at once.
    #[arg(long, value_name = "N")]
    pub max_unavailable: Option<u32>,
}

impl ScaleCreateArgs {
    /// Puts the flags' options into `spec`.
    pub fn fill(&self, spec: &mut DeploymentSpec) {
        spec.max_replicas = self.max_replicas.unwrap_or(0);
        // Without --max-replicas a minimum stays as given, for validation to refuse.
        spec.min_replicas = match self.min_replicas {
            Some(min) => min,
            None if spec.max_replicas > 0 => 1,
            None => 0,
        };
        spec.target_cpu_percent = self.target_cpu;
        spec.max_unavailable = self.max_unavailable;
    }
}

impl ScaleUpdateArgs {
    /// Puts the flags' changes into `req`; whether there is any.
    pub fn fill(&self, req: &mut proto::UpdateDeploymentRequest) -> bool {
        req.min_replicas = self.min_replicas;
        req.max_replicas = if self.no_autoscale {
            Some(0)
        } else {
            self.max_replicas
        };
        req.target_cpu_percent = self.target_cpu;
        req.max_unavailable = self.max_unavailable;
        req.min_replicas.is_some()
            || req.max_replicas.is_some()
            || req.target_cpu_percent.is_some()
            || req.max_unavailable.is_some()
    }
}

/// The `ds deployment get` lines of autoscaling and the budget (none when off).
pub fn shown(s: &DeploymentSpec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if s.autoscaled() {
        out.push((
            "Autoscaling",
            format!(
                "{} to {} replicas at {}% CPU (--replicas {} when off)",
                s.min_replicas,
                s.max_replicas,
                s.target_cpu(),
                s.replicas
            ),
        ));
    }
    if s.wants_disruption_budget() {
        out.push((
            "Disruption budget",
            format!("at most {} unavailable", s.max_unavailable_pods()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_defaults_the_minimum_to_one_only_with_a_maximum() {
        let mut spec = DeploymentSpec::test("iris");
        let args = |min, max| ScaleCreateArgs {
            min_replicas: min,
            max_replicas: max,
            target_cpu: None,
            max_unavailable: None,
        };
        args(None, Some(4)).fill(&mut spec);
        assert_eq!((spec.min_replicas, spec.max_replicas), (1, 4));
        args(Some(3), None).fill(&mut spec);
        assert_eq!((spec.min_replicas, spec.max_replicas), (3, 0));
        args(None, None).fill(&mut spec);
        assert!(!spec.autoscaled());
    }

    #[test]
    fn no_autoscale_sends_max_zero() {
        let mut req = proto::UpdateDeploymentRequest::default();
        let args = ScaleUpdateArgs {
            min_replicas: None,
            max_replicas: None,
            target_cpu: None,
            no_autoscale: true,
            max_unavailable: None,
        };
        assert!(args.fill(&mut req));
        assert_eq!(req.max_replicas, Some(0));
        let none = ScaleUpdateArgs {
            no_autoscale: false,
            ..args
        };
        assert!(!none.fill(&mut proto::UpdateDeploymentRequest::default()));
    }

    #[test]
    fn get_shows_autoscaling_and_the_budget_only_when_they_apply() {
        assert!(shown(&DeploymentSpec::test("iris")).is_empty());
        let mut s = DeploymentSpec::test("iris").replicas(3);
        assert_eq!(
            shown(&s),
            [("Disruption budget", "at most 1 unavailable".to_string())]
        );
        s.min_replicas = 1;
        s.max_replicas = 5;
        s.target_cpu_percent = Some(60);
        assert_eq!(
            shown(&s),
            [(
                "Autoscaling",
                "1 to 5 replicas at 60% CPU (--replicas 3 when off)".to_string()
            )]
        );
    }
}
