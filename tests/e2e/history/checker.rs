//! The checker: invariants over everything that happened in one history
//! (Jepsen's way). Its inputs are the table's committed writes in the order
//! DynamoDB applied them (moto's `MOTO_HISTORY`), the final table, the
//! events the sinks delivered, and the workload's truth about the share and
//! S3. A decision is judged on the table as it was when the decision
//! committed, so no timing on the test's side can excuse or fake one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use vault_agent::store::EntryRecord;
use vault_agent::store::dynamodb::item::{DATASET_SK, dataset_from_item, entry_from_item};

use super::workload::{Workload, manifest_text};

/// What one history showed.
#[derive(Debug, Default)]
pub struct Report {
    /// Committed table writes replayed.
    pub writes: usize,
    /// Decisions committed.
    pub decisions: usize,
    /// Events delivered (repeats of one event id included).
    pub delivered: usize,
    pub violations: Vec<String>,
}

/// The outcome an `Update` of a dataset item sets, if it sets one.
fn outcome_set(update: &Value) -> Option<String> {
    let names = update["ExpressionAttributeNames"].as_object()?;
    let placeholder = names.iter().find(|(_, v)| *v == "outcome")?.0;
    let expression = update["UpdateExpression"].as_str()?;
    let after = expression.split(&format!("{placeholder} = ")).nth(1)?;
    let value = after.split([',', ' ']).next()?;
    update["ExpressionAttributeValues"][value]["S"]
        .as_str()
        .map(str::to_owned)
}

fn key_of(item: &Value) -> Option<(String, String)> {
    Some((
        item["setId"]["S"].as_str()?.to_owned(),
        item["objectKey"]["S"].as_str()?.to_owned(),
    ))
}

/// The table's entries as the replay goes: (set-id, key) → item.
type Entries = HashMap<(String, String), Value>;

/// Replays the committed writes of `table`, judging each decision as it
/// commits.
pub fn check_history(
    workload: &Workload,
    table: &str,
    history: &[Value],
    report: &mut Report,
) -> BTreeMap<String, Vec<String>> {
    let mut entries = Entries::new();
    let mut decisions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in history.iter().filter(|l| l["ok"] == true) {
        let request = &line["request"];
        let mut ops: Vec<(&str, &Value)> = Vec::new();
        match line["op"].as_str() {
            Some("TransactWriteItems") => {
                for item in request["TransactItems"].as_array().into_iter().flatten() {
                    for kind in ["Put", "Update", "Delete", "ConditionCheck"] {
                        if item[kind].is_object() {
                            ops.push((kind, &item[kind]));
                        }
                    }
                }
            }
            Some("PutItem") => ops.push(("Put", request)),
            Some("UpdateItem") => ops.push(("Update", request)),
            Some("DeleteItem") => ops.push(("Delete", request)),
            Some("BatchWriteItem") => {
                for (name, writes) in request["RequestItems"].as_object().into_iter().flatten() {
                    for w in writes.as_array().into_iter().flatten() {
                        if w["PutRequest"].is_object() {
                            ops.push(("Put", &w["PutRequest"]));
                        } else if w["DeleteRequest"].is_object() {
                            ops.push(("Delete", &w["DeleteRequest"]));
                        }
                        let _ = name;
                    }
                }
            }
            _ => {}
        }
        let mut decided_now = Vec::new();
        for (kind, op) in ops {
            if op["TableName"].as_str().is_some_and(|t| t != table) {
                continue;
            }
            if line["op"] == "BatchWriteItem" && !request["RequestItems"][table].is_array() {
                continue;
            }
            report.writes += 1;
            match kind {
                "Put" => {
                    if let Some(k) = key_of(&op["Item"]) {
                        entries.insert(k, op["Item"].clone());
                    }
                }
                "Delete" => {
                    if let Some(k) = key_of(&op["Key"]) {
                        entries.remove(&k);
                    }
                }
                "Update" => {
                    if let (Some((set_id, sk)), Some(outcome)) =
                        (key_of(&op["Key"]), outcome_set(op))
                        && sk == DATASET_SK
                    {
                        decided_now.push((set_id, outcome));
                    }
                }
                _ => {}
            }
        }
        // A transaction's writes are one instant: judge after all of them.
        for (set_id, outcome) in decided_now {
            report.decisions += 1;
            if outcome == "succeeded" {
                judge_success(workload, &entries, &set_id, line["seq"].as_u64(), report);
            }
            decisions.entry(set_id).or_default().push(outcome);
        }
    }
    for (set_id, outcomes) in &decisions {
        if outcomes.len() > 1 {
            report.violations.push(format!(
                "{set_id}: {} decisions committed: {outcomes:?}",
                outcomes.len()
            ));
        }
    }
    decisions
}

/// A `Successful` committed at history position `seq`: every entry of the
/// newest manifest recorded then had a whole upload, and nothing else was
/// uploaded (exact-match).
fn judge_success(
    workload: &Workload,
    entries: &Entries,
    set_id: &str,
    seq: Option<u64>,
    report: &mut Report,
) {
    let at = format!("{set_id} Successful at write {}", seq.unwrap_or(0));
    let Some(d) = workload.datasets.iter().find(|d| d.set_id == set_id) else {
        report
            .violations
            .push(format!("{at}: not a dataset of the workload"));
        return;
    };
    let row = |key: &str| entries.get(&(set_id.to_owned(), key.to_owned()));
    // Which manifest the newest record is: by its notification's time, or
    // (recorded from a listing) by its size.
    let manifest = row(&d.manifest_key());
    let number = |m: Option<&Value>, attr: &str| {
        m.and_then(|m| m[attr]["N"].as_str())
            .and_then(|t| t.parse::<i64>().ok())
    };
    let (time, size) = (
        number(manifest, "eventTime"),
        number(manifest, "objectSize"),
    );
    let listed = manifest.is_some_and(|m| m["listed"]["BOOL"] == true);
    let size_of = |resealed| Some(manifest_text(d, resealed).len() as i64);
    let resealed = match time {
        Some(t) if !listed && t == workload.first.secs => false,
        Some(t) if !listed && t == workload.resealed.secs => true,
        _ if listed && size == size_of(false) => false,
        _ if listed && size == size_of(true) => true,
        other => {
            report.violations.push(format!(
                "{at}: the manifest's record is {other:?}, {size:?} bytes"
            ));
            return;
        }
    };
    let lines = d.manifest_lines(resealed);
    let sizes = workload.sizes(d, resealed);
    for line in &lines {
        let Some(item) = row(line).filter(|i| i["objectSize"].is_object()) else {
            report.violations.push(format!(
                "{at}: {line} of the {} manifest had no upload ({:?})",
                if resealed { "re-sealed" } else { "first" },
                d.scenario
            ));
            continue;
        };
        let size = item["objectSize"]["N"]
            .as_str()
            .and_then(|n| n.parse::<u64>().ok());
        let listed = item["listed"]["BOOL"] == true;
        if !d.is_dir(line) && size != sizes.get(line).copied() {
            report.violations.push(format!(
                "{at}: counted {}{line} of {size:?} bytes; the share holds {:?} ({:?})",
                if listed { "a listed copy of " } else { "" },
                sizes.get(line),
                d.scenario
            ));
        }
        if item["verdict"]["N"] != "0" {
            report
                .violations
                .push(format!("{at}: {line} was not judged countable: {item}"));
        }
    }
    let expected: BTreeSet<&String> = lines.iter().collect();
    for ((s, key), item) in entries {
        if s == set_id
            && item["objectSize"].is_object()
            && item["verdict"]["N"] == "0"
            && !expected.contains(key)
        {
            report.violations.push(format!(
                "{at}: an upload the manifest does not list, {key}, was committed first ({:?})",
                d.scenario
            ));
        }
    }
}

/// The final outcome of every dataset against what its scenario requires,
/// and the delivered events against the table.
pub fn check_outcomes(
    workload: &Workload,
    decisions: &BTreeMap<String, Vec<String>>,
    notes: &BTreeMap<String, String>,
    events: &[Value],
    report: &mut Report,
) {
    report.delivered = events.len();
    let mut by_set: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for e in events {
        let set_id = e["detail"]["set-id"].as_str().unwrap_or_default();
        let id = e["id"].as_str().unwrap_or_default();
        let kind = e["detail-type"].as_str().unwrap_or_default();
        by_set.entry(set_id).or_default().insert(id, kind);
    }
    for d in &workload.datasets {
        let outcome = decisions
            .get(&d.set_id)
            .and_then(|o| o.first())
            .map(String::as_str);
        let note = notes.get(&d.set_id).map(String::as_str).unwrap_or("");
        let name = format!("{} ({:?}, note {note:?})", d.set_id, d.scenario);
        match outcome {
            None => report.violations.push(format!("{name}: never decided")),
            Some("timed-out") if d.scenario.must_succeed() => report.violations.push(format!(
                "{name}: timed out although its data was whole in S3 before its deadline"
            )),
            Some("succeeded") if d.scenario.must_not_succeed() => report
                .violations
                .push(format!("{name}: Successful although it never was complete")),
            _ => {}
        }
        let delivered = by_set.get(d.set_id.as_str());
        match (outcome, delivered) {
            (Some(_), None) => report
                .violations
                .push(format!("{name}: decided, but no event was delivered")),
            (None, Some(ev)) => report
                .violations
                .push(format!("{name}: events {ev:?} for a dataset not decided")),
            (Some(outcome), Some(ev)) => {
                if ev.len() > 1 {
                    report.violations.push(format!(
                        "{name}: {} different decision events: {ev:?}",
                        ev.len()
                    ));
                }
                let want = match outcome {
                    "succeeded" => "File Upload Reconciliation Successful",
                    _ => "File Upload Reconciliation Timeout",
                };
                if ev.values().any(|k| *k != want) {
                    report.violations.push(format!(
                        "{name}: the table says {outcome}, the events {ev:?}"
                    ));
                }
            }
            (None, None) => {}
        }
    }
}

/// Every dataset's counters equal the sum over its entries' rows.
pub fn check_counters(
    items: &[HashMap<String, aws_sdk_dynamodb::types::AttributeValue>],
    prefix: &str,
    report: &mut Report,
) {
    let mut sums: BTreeMap<String, vault_agent::store::Counts> = BTreeMap::new();
    let mut datasets = Vec::new();
    for item in items {
        let (Some(set_id), Some(sk)) = (
            item.get("setId").and_then(|v| v.as_s().ok()),
            item.get("objectKey").and_then(|v| v.as_s().ok()),
        ) else {
            continue;
        };
        if !set_id.starts_with(prefix) {
            continue;
        }
        if sk == DATASET_SK {
            match dataset_from_item(item) {
                Ok(ds) => datasets.push(ds),
                Err(e) => report
                    .violations
                    .push(format!("{set_id}: unreadable dataset: {e}")),
            }
        } else {
            match entry_from_item(item) {
                Ok((entry, _)) => {
                    *sums.entry(set_id.clone()).or_default() +=
                        EntryRecord::contribution(Some(&entry));
                }
                Err(e) => report
                    .violations
                    .push(format!("{set_id}: unreadable entry {sk}: {e}")),
            }
        }
    }
    for ds in datasets {
        let rows = sums.remove(&ds.set_id).unwrap_or_default();
        if ds.counts != rows {
            report.violations.push(format!(
                "{}: counters {:?} differ from the sum of its rows {:?}",
                ds.set_id, ds.counts, rows
            ));
        }
    }
}
