//! A seeded workload: datasets with what happens to each (the scenario),
//! and the truth the checker judges decisions against. The same seed gives
//! the same workload.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

/// A gateway event time: as sent, and in epoch seconds as recorded.
#[derive(Debug, Clone)]
pub struct EventTime {
    pub text: String,
    pub secs: i64,
}

impl EventTime {
    fn at(secs: i64) -> EventTime {
        EventTime {
            text: vault_agent::notification::time::format_event_time(secs * 1000),
            secs,
        }
    }
}

/// What happens to one dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Everything uploaded and notified (duplicates, any order).
    Complete,
    /// Everything in S3; one file's notification lost (a listing heals it).
    LostNotification,
    /// One file never reaches S3 nor is notified: it must time out.
    Missing,
    /// One file is a partial copy in S3, never notified; `healed`: the
    /// whole object replaces it later.
    PartialCopy { healed: bool },
    /// One file held back; once the manifest is loaded it arrives at the
    /// same moment as an upload the manifest does not list (two agents
    /// record them at once).
    Stray,
    /// One file held back; then re-sealed with a new file that never
    /// reaches S3, and the held-back file arrives with the newer manifest.
    Resealed,
}

impl Scenario {
    /// Whether the dataset must end `Successful`: its data is whole in S3
    /// before its deadline, so any listing before a timeout finds it.
    pub fn must_succeed(self) -> bool {
        matches!(self, Scenario::Complete | Scenario::LostNotification)
    }

    /// Whether it must never be `Successful`, whatever the timing (a stray
    /// may be recorded after a legitimate decision: the replay judges that).
    pub fn must_not_succeed(self) -> bool {
        matches!(
            self,
            Scenario::Missing | Scenario::PartialCopy { healed: false }
        )
    }
}

/// One dataset of a workload.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub set_id: String,
    pub scenario: Scenario,
    /// File names below the dataset directory, with their bytes.
    pub files: Vec<(String, Vec<u8>)>,
    /// The file the scenario is about (held back, lost, partial...).
    pub special: String,
    /// The re-seal's new file.
    pub added: Option<(String, Vec<u8>)>,
}

impl Dataset {
    pub fn dir(&self) -> String {
        format!("{}-vaultjob", self.set_id)
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.dir())
    }

    pub fn manifest_key(&self) -> String {
        self.key(&format!("{}.manifest", self.set_id))
    }

    /// The manifest's lines: the directories, the files, the manifest.
    pub fn manifest_lines(&self, resealed: bool) -> Vec<String> {
        let mut lines = vec![self.dir(), self.key("d")];
        let mut files: Vec<&String> = self.files.iter().map(|(n, _)| n).collect();
        if resealed && let Some((name, _)) = &self.added {
            files.push(name);
        }
        lines.extend(files.into_iter().map(|n| self.key(n)));
        lines.push(self.manifest_key());
        lines
    }

    /// Whether a manifest line is a directory (its S3 key ends in `/`).
    pub fn is_dir(&self, line: &str) -> bool {
        line == self.dir() || line == self.key("d")
    }

    /// The S3 key of a manifest line.
    pub fn object_key(&self, line: &str) -> String {
        if self.is_dir(line) {
            format!("{line}/")
        } else {
            line.to_owned()
        }
    }

    pub fn special_key(&self) -> String {
        self.key(&self.special)
    }

    pub fn stray_key(&self) -> String {
        self.key(".nfs0000000000stray")
    }
}

/// A whole workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    pub datasets: Vec<Dataset>,
    /// After how many of the first phase's notification batches an agent
    /// is SIGKILLed (restarted once the phase is sent).
    pub kill_after_batch: Option<usize>,
    /// Which agent.
    pub victim: usize,
    /// Repeated notifications (at-least-once delivery), in percent.
    pub duplicates_percent: u32,
    /// The first uploads' event time: before any object of the history is
    /// in S3, as the gateway's are (S3's LastModified follows it).
    pub first: EventTime,
    /// The re-seal's manifest: later than anything of the first phase.
    pub resealed: EventTime,
}

impl Workload {
    /// `now_secs`: the wall clock when the history starts.
    pub fn generate(seed: u64, datasets: usize, agents: usize, now_secs: i64) -> Workload {
        let mut rng = StdRng::seed_from_u64(seed);
        let kinds = [
            Scenario::Complete,
            Scenario::LostNotification,
            Scenario::Missing,
            Scenario::PartialCopy { healed: true },
            Scenario::PartialCopy { healed: false },
            Scenario::Stray,
            Scenario::Resealed,
        ];
        let datasets = (0..datasets)
            .map(|i| {
                let scenario = *kinds.choose(&mut rng).expect("kinds");
                let n = rng.random_range(2..=4);
                let mut files: Vec<(String, Vec<u8>)> = (0..n)
                    .map(|f| {
                        let name = if f == 0 {
                            format!("d/f{f}.dat")
                        } else {
                            format!("f{f}.dat")
                        };
                        let len = rng.random_range(1..=300);
                        (name, (0..len).map(|_| rng.random::<u8>()).collect())
                    })
                    .collect();
                let special_at = rng.random_range(0..files.len());
                if matches!(scenario, Scenario::PartialCopy { .. }) {
                    // Large enough that a partial copy is visibly smaller.
                    files[special_at].1 = (0..4096).map(|_| rng.random::<u8>()).collect();
                }
                let special = files[special_at].0.clone();
                let added = (scenario == Scenario::Resealed)
                    .then(|| ("added.dat".to_owned(), b"added by the re-seal".to_vec()));
                Dataset {
                    set_id: format!("H{seed:05}S{i:02}"),
                    scenario,
                    files,
                    special,
                    added,
                }
            })
            .collect();
        Workload {
            seed,
            datasets,
            kill_after_batch: rng.random_bool(0.7).then(|| rng.random_range(0..4)),
            victim: rng.random_range(0..agents),
            duplicates_percent: rng.random_range(0..=40),
            first: EventTime::at(now_secs - 10),
            resealed: EventTime::at(now_secs + 3600),
        }
    }

    /// The first phase's notifications: (key, size, event time), shuffled,
    /// with repeats.
    pub fn first_notifications(&self) -> Vec<(String, u64, String)> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed);
        let mut sent = Vec::new();
        for d in &self.datasets {
            let sizes = self.sizes(d, false);
            for line in d.manifest_lines(false) {
                let held_back = line == d.special_key()
                    && matches!(
                        d.scenario,
                        Scenario::LostNotification
                            | Scenario::Missing
                            | Scenario::PartialCopy { .. }
                            | Scenario::Resealed
                            | Scenario::Stray
                    );
                if held_back {
                    continue;
                }
                let size = sizes.get(&line).copied().unwrap_or(0);
                sent.push((d.object_key(&line), size, self.first.text.clone()));
            }
        }
        let repeats: Vec<_> = sent
            .iter()
            .filter(|_| rng.random_range(0..100) < self.duplicates_percent)
            .cloned()
            .collect();
        sent.extend(repeats);
        sent.shuffle(&mut rng);
        sent
    }

    /// Each manifest line's true size on the share (directories 0).
    pub fn sizes(&self, d: &Dataset, resealed: bool) -> BTreeMap<String, u64> {
        let mut sizes = BTreeMap::new();
        for (name, bytes) in d.files.iter().chain(d.added.iter().filter(|_| resealed)) {
            sizes.insert(d.key(name), bytes.len() as u64);
        }
        sizes.insert(d.manifest_key(), manifest_text(d, resealed).len() as u64);
        sizes
    }
}

/// A manifest's text: one line each, directories included (as the agent's
/// `seal` writes it).
pub fn manifest_text(d: &Dataset, resealed: bool) -> String {
    d.manifest_lines(resealed).join("\n") + "\n"
}
