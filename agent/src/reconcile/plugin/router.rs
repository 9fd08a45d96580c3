//! Per-set-id policies: `[[reconcile.route]]` entries are tried in order and
//! the first whose glob matches the set-id decides; otherwise the default.

use crate::reconcile::policy::{
    Decision, ExpectedEntry, Policy, PolicyError, PolicyState, Summary, UploadVerdict, UploadView,
};

pub struct PolicyRouter {
    routes: Vec<(glob::Pattern, Box<dyn Policy>)>,
    default: Box<dyn Policy>,
}

impl PolicyRouter {
    pub fn new(routes: Vec<(glob::Pattern, Box<dyn Policy>)>, default: Box<dyn Policy>) -> Self {
        PolicyRouter { routes, default }
    }

    fn route(&mut self, set_id: &str) -> &mut dyn Policy {
        match self.routes.iter_mut().find(|(p, _)| p.matches(set_id)) {
            Some((_, policy)) => policy.as_mut(),
            None => self.default.as_mut(),
        }
    }

    /// The name of the policy that decides `set_id`.
    pub fn policy_for(&mut self, set_id: &str) -> String {
        self.route(set_id).name().to_owned()
    }
}

impl Policy for PolicyRouter {
    fn name(&self) -> &str {
        "router"
    }

    fn describe(&mut self, set_id: &str) -> String {
        self.route(set_id).describe(set_id)
    }

    fn wants_expected_sizes(&mut self, set_id: &str) -> bool {
        self.route(set_id).wants_expected_sizes(set_id)
    }

    fn expects(
        &mut self,
        set_id: &str,
        entry: &str,
        state: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError> {
        self.route(set_id).expects(set_id, entry, state)
    }

    fn begin_batch(&mut self) -> bool {
        let mut reloaded = self.default.begin_batch();
        for (_, policy) in &mut self.routes {
            reloaded |= policy.begin_batch();
        }
        reloaded
    }

    fn set_waker(&mut self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        self.default.set_waker(wake.clone());
        for (_, policy) in &mut self.routes {
            policy.set_waker(wake.clone());
        }
    }

    fn on_upload(
        &mut self,
        upload: &UploadView<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<UploadVerdict, PolicyError> {
        self.route(upload.set_id).on_upload(upload, state)
    }

    fn entry_matches(
        &mut self,
        expected: &ExpectedEntry<'_>,
        upload: &UploadView<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<bool, PolicyError> {
        self.route(upload.set_id)
            .entry_matches(expected, upload, state)
    }

    fn decide(
        &mut self,
        summary: &Summary<'_>,
        state: &mut Option<PolicyState>,
    ) -> Result<Decision, PolicyError> {
        self.route(summary.set_id).decide(summary, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::policy::ExactMatch;

    struct Named(&'static str);

    impl Policy for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn on_upload(
            &mut self,
            _: &UploadView<'_>,
            _: &mut Option<PolicyState>,
        ) -> Result<UploadVerdict, PolicyError> {
            Ok(UploadVerdict::Ignore)
        }
        fn entry_matches(
            &mut self,
            _: &ExpectedEntry<'_>,
            _: &UploadView<'_>,
            _: &mut Option<PolicyState>,
        ) -> Result<bool, PolicyError> {
            Ok(false)
        }
        fn decide(
            &mut self,
            _: &Summary<'_>,
            _: &mut Option<PolicyState>,
        ) -> Result<Decision, PolicyError> {
            Ok(Decision::Fail("named".into()))
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let mut r = PolicyRouter::new(
            vec![
                (
                    glob::Pattern::new("GEN*").unwrap(),
                    Box::new(Named("genomics")),
                ),
                (
                    glob::Pattern::new("G*").unwrap(),
                    Box::new(Named("other-g")),
                ),
                (
                    glob::Pattern::new("MEDIA-??").unwrap(),
                    Box::new(Named("media")),
                ),
            ],
            Box::new(ExactMatch),
        );
        assert_eq!(r.policy_for("GENOME1"), "genomics");
        assert_eq!(r.policy_for("GALAXY"), "other-g");
        assert_eq!(r.policy_for("MEDIA-01"), "media");
        assert_eq!(r.policy_for("MEDIA-001"), "exact-match-native");
    }
}
