//! Deciding: the policy's word on each touched dataset, the deadline, and
//! the one event a decision queues.

use super::*;

impl Reconciler {
    /// Whether a dataset past its deadline has had its manifest looked at:
    /// loaded, or its last read (or the policy's `expects`) failed. A read
    /// that is queued or running (each re-check starts one for a manifest
    /// not loaded) holds the Timeout back: a dataset is never timed out
    /// unevaluated because the manifest was read late. Reads end, by a
    /// result or by `manifest_read_timeout`, so the hold does too.
    fn manifest_settled(&self, ds: &DatasetRecord) -> bool {
        ds.manifest_loaded || self.manifest_failed.contains(&ds.set_id)
    }

    /// Asks the policy about every touched dataset still reconciling.
    pub(super) fn decide_touched(&mut self, b: &mut Batch) {
        let now = b.now;
        let effects = &mut b.effects;
        for ds in effects.touched.values_mut() {
            if ds.state != DatasetState::Reconciling {
                continue;
            }
            if ds.manifest_loaded {
                let summary = Summary {
                    set_id: &ds.set_id,
                    manifest_entries: ds.manifest_entries,
                    received: ds.counts.received,
                    matched: ds.counts.matched,
                    mismatched: ds.counts.mismatched,
                    missing: ds.missing().unwrap_or(0),
                    unexpected: ds.unexpected().unwrap_or(0),
                    ignored: ds.counts.ignored,
                    rejected: ds.counts.rejected,
                };
                let decision = if ds.counts.unjudged > 0 {
                    // Fail closed: the policy has not judged every upload.
                    Ok(Decision::Wait(ds.note.clone().unwrap_or_else(|| {
                        format!(
                            "{} uploads not judged yet by the policy",
                            ds.counts.unjudged
                        )
                    })))
                } else {
                    self.policy.decide(&summary, &mut ds.policy_state)
                };
                let decision = match decision {
                    // `required`: the policy's word, and every file's bytes.
                    Ok(Decision::Complete) => match self.content_unproven(ds) {
                        Some(unproven) => Ok(Decision::Wait(unproven)),
                        None => Ok(Decision::Complete),
                    },
                    other => other,
                };
                match decision {
                    Ok(Decision::Complete) => {
                        if summary.missing > 0 || summary.unexpected > 0 || summary.mismatched > 0 {
                            // Allowed (a policy defines "complete"), but said.
                            warn!(
                                set_id = %ds.set_id,
                                policy = %self.policy.describe(&ds.set_id),
                                missing = summary.missing,
                                unexpected = summary.unexpected,
                                mismatched = summary.mismatched,
                                "the policy declared the dataset complete although {} manifest entries are missing",
                                summary.missing
                            );
                        }
                        ds.note = None;
                        close(
                            ds,
                            DatasetState::Succeeded,
                            &self.settings.origin,
                            now,
                            &mut effects.events,
                        );
                        continue;
                    }
                    Ok(Decision::Fail(reason)) => {
                        ds.note = Some(reason);
                        close(
                            ds,
                            DatasetState::Failed,
                            &self.settings.origin,
                            now,
                            &mut effects.events,
                        );
                        continue;
                    }
                    Ok(Decision::Wait(reason)) => {
                        // What the last listing found stays said until the
                        // next listing.
                        let partial = ds.note.as_deref().and_then(partial_part).map(str::to_owned);
                        ds.note = (!reason.is_empty()).then_some(reason).or(ds.note.take());
                        if let Some(partial) = partial {
                            ds.note = Some(with_partial(ds.note.as_deref(), &partial));
                        }
                    }
                    Err(e) if e.is_deferred() => {
                        self.deferred.insert(ds.set_id.clone());
                    }
                    Err(e) => {
                        error!(set_id = %ds.set_id, error = %e, "policy decision failed; dataset keeps waiting");
                        ds.note = Some(e.to_string());
                    }
                }
            }
            if ds.deadline_ms.is_some_and(|d| d <= now)
                && self.manifest_settled(ds)
                && self.prepare_timeout(
                    ds,
                    effects.listed.get(&ds.set_id),
                    &mut effects.listings,
                    now,
                )
            {
                if self.content_mode(&ds.set_id) != ContentMode::Off
                    && ds.counts.verified < ds.manifest_entries
                {
                    let content = self.content_timeout_note(&mut *b.tx, ds);
                    ds.note = Some(
                        match ds.note.take().filter(|n| !n.starts_with("content: ")) {
                            Some(note) => format!("{note}; {content}"),
                            None => content,
                        },
                    );
                }
                close(
                    ds,
                    DatasetState::TimedOut,
                    &self.settings.origin,
                    now,
                    &mut effects.events,
                );
            }
        }
    }
}

/// Decides a dataset once and for all, queueing its one event.
pub(super) fn close(
    ds: &mut DatasetRecord,
    state: DatasetState,
    origin: &Origin,
    now: i64,
    events: &mut Vec<OutboxEvent>,
) {
    let Some(manifest) = ds.manifest.as_ref() else {
        return;
    };
    let detail_type = if state == DatasetState::Succeeded {
        outbound::SUCCESSFUL
    } else {
        outbound::TIMEOUT
    };
    ds.state = state;
    ds.decided_ms = Some(now);
    events.push(outbound::reconcile_event(
        detail_type,
        &ds.set_id,
        manifest,
        origin,
        now,
    ));
}
