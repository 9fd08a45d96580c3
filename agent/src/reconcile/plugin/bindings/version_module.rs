//! What every version's bindings module holds besides its `bindgen!`: the
//! instance wrapper and the conversions, written once. A version module
//! invokes [`version_module!`] after generating its bindings; the names it
//! uses (`vault::reconcile::types`, `ReconcilePolicy`) resolve to that
//! version's generated items.

macro_rules! version_module {
    () => {
        use wasmtime::Store;
        use wasmtime::component::{HasSelf, Linker};

        use self::vault::reconcile::host::Level;
        use self::vault::reconcile::types as wit;
        use crate::notification::UploadKind;
        use crate::reconcile::plugin::host::{HostState, capped};
        use crate::reconcile::policy::{
            Decision, ExpectedEntry, Summary, UploadVerdict, UploadView,
        };

        pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
            ReconcilePolicy::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)
        }

        impl self::vault::reconcile::types::Host for HostState {}

        impl self::vault::reconcile::host::Host for HostState {
            fn log(&mut self, level: Level, message: String) {
                let level = match level {
                    Level::Debug => tracing::Level::DEBUG,
                    Level::Info => tracing::Level::INFO,
                    Level::Warn => tracing::Level::WARN,
                    Level::Error => tracing::Level::ERROR,
                };
                self.log_line(level, message);
            }
        }

        /// An instance, with the upload record reused for every call so a
        /// hook call allocates no strings here.
        pub struct Bound {
            instance: ReconcilePolicy,
            scratch: wit::Upload,
        }

        impl Bound {
            pub fn new(instance: ReconcilePolicy) -> Bound {
                Bound {
                    instance,
                    scratch: wit::Upload {
                        set_id: String::new(),
                        object_key: String::new(),
                        entry: String::new(),
                        size: 0,
                        event_time: 0,
                        kind: wit::UploadKind::Data,
                    },
                }
            }

            pub fn init(
                &self,
                store: &mut Store<HostState>,
                settings: &[(String, String)],
            ) -> wasmtime::Result<Result<(), String>> {
                self.instance
                    .vault_reconcile_policy()
                    .call_init(store, settings)
            }

            pub fn wants_expected_sizes(
                &self,
                store: &mut Store<HostState>,
            ) -> wasmtime::Result<bool> {
                self.instance
                    .vault_reconcile_policy()
                    .call_wants_expected_sizes(store)
            }

            pub fn expects(
                &self,
                store: &mut Store<HostState>,
                entry: &str,
            ) -> wasmtime::Result<bool> {
                self.instance
                    .vault_reconcile_policy()
                    .call_expects(store, entry)
            }

            pub fn on_upload(
                &mut self,
                store: &mut Store<HostState>,
                view: &UploadView<'_>,
            ) -> wasmtime::Result<UploadVerdict> {
                fill(&mut self.scratch, view);
                let verdict = self
                    .instance
                    .vault_reconcile_policy()
                    .call_on_upload(store, &self.scratch)?;
                Ok(match verdict {
                    wit::UploadVerdict::Count => UploadVerdict::Count,
                    wit::UploadVerdict::Ignore => UploadVerdict::Ignore,
                    wit::UploadVerdict::Reject(reason) => UploadVerdict::Reject(capped(reason)),
                })
            }

            pub fn entry_matches(
                &mut self,
                store: &mut Store<HostState>,
                expected: &ExpectedEntry<'_>,
                view: &UploadView<'_>,
            ) -> wasmtime::Result<bool> {
                let expected = wit::ExpectedEntry {
                    entry: expected.entry.to_owned(),
                    size: expected.size,
                };
                fill(&mut self.scratch, view);
                self.instance.vault_reconcile_policy().call_entry_matches(
                    store,
                    &expected,
                    &self.scratch,
                )
            }

            pub fn decide(
                &self,
                store: &mut Store<HostState>,
                s: &Summary<'_>,
            ) -> wasmtime::Result<Decision> {
                let summary = wit::Summary {
                    set_id: s.set_id.to_owned(),
                    manifest_entries: s.manifest_entries,
                    received: s.received,
                    matched: s.matched,
                    mismatched: s.mismatched,
                    missing: s.missing,
                    unexpected: s.unexpected,
                    ignored: s.ignored,
                    rejected: s.rejected,
                };
                let decision = self
                    .instance
                    .vault_reconcile_policy()
                    .call_decide(store, &summary)?;
                Ok(match decision {
                    wit::Decision::Complete => Decision::Complete,
                    wit::Decision::Wait(reason) => Decision::Wait(capped(reason)),
                    wit::Decision::Fail(reason) => Decision::Fail(capped(reason)),
                })
            }
        }

        /// Copies a view into the reusable record (keeping its buffers).
        fn fill(record: &mut wit::Upload, view: &UploadView<'_>) {
            for (to, from) in [
                (&mut record.set_id, view.set_id),
                (&mut record.object_key, view.object_key),
                (&mut record.entry, view.entry),
            ] {
                to.clear();
                to.push_str(from);
            }
            record.size = view.size;
            record.event_time = view.event_time;
            record.kind = match view.kind {
                UploadKind::Data => wit::UploadKind::Data,
                UploadKind::Manifest => wit::UploadKind::Manifest,
            };
        }
    };
}
