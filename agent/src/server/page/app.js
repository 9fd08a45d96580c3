// The vault-agent status page: reads /status (active datasets first, one
// page at a time) and /status/{set-id}, and redraws every 2 s. Everything
// from the agent is put into the page as text, never as HTML.
"use strict";

const PAGE = 50;
const RECENT = 50;
const REFRESH_MS = 2000;

const ui = {
  cursors: [null], // the `after` of each page seen so far; the last is shown
  next: null,
  open: null, // the set-id whose paths are listed
  detail: null, // its /status/{set-id} reply
  key: sessionStorage.getItem("vault-agent-key"),
  clockSkewMs: 0, // agent's clock minus this browser's
  timer: null,
  busy: false,
  again: false, // a refresh was asked for while one ran
  last: null, // the last /status reply
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${r}s`;
  return `${r}s`;
}

function badge(text, kind) {
  return el("span", { class: "badge " + (kind || text) }, text);
}

function progress(done, total, label) {
  if (!total) return el("span", { class: "muted" }, label || "–");
  const pct = Math.floor((100 * done) / total);
  return el("span", { class: "progress" },
    el("progress", { max: String(total), value: String(done) }),
    `${label} (${pct}%)`);
}

async function getJson(path) {
  const headers = ui.key ? { "x-api-key": ui.key } : {};
  const resp = await fetch(path, { headers, cache: "no-store" });
  if (resp.status === 401) {
    $("keyform").hidden = false;
    throw new Error("this agent needs its API key to show status");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || `${path}: HTTP ${resp.status}`);
  return body;
}

function datasetRow(d) {
  const entries = d["manifest-entries"];
  const uploaded = entries === null ? null : entries - (d.missing || 0);
  const files = entries === null
    ? el("span", { class: "muted" }, d.received + " received, no manifest yet")
    : progress(uploaded, entries, `${uploaded} / ${entries}`);
  const confirmed = d["local-bytes"] - d["pending-bytes"];
  const size = d["local-files"] > 0
    ? progress(confirmed, d["local-bytes"], `${bytes(confirmed)} / ${bytes(d["local-bytes"])}`)
    : el("span", { class: "muted" }, "not on this share");
  // Bytes proven by S3's checksum against the file's (verify_content).
  const content = d.content || {};
  const checked = (content.verified || 0) + (content.mismatch || 0) + (content.unverifiable || 0);
  const verified = checked === 0
    ? el("span", { class: "muted" }, "–")
    : progress(content["verified-bytes"], d["local-bytes"] || content["verified-bytes"],
      `${bytes(content["verified-bytes"])}` +
      (content.mismatch ? `, ${content.mismatch} mismatched` : "") +
      (content.unverifiable ? `, ${content.unverifiable} unverifiable` : ""));
  let deadline = "–";
  if (d.decided) deadline = "decided " + d.decided;
  else if (d.deadline) {
    const left = (Date.parse(d.deadline) - (Date.now() + ui.clockSkewMs)) / 1000;
    deadline = left > 0 ? duration(left) : "due now";
  }
  const rate = d["upload-rate-bytes-per-second"];
  return el("tr", { class: "dataset", "data-set-id": d["set-id"], title: "Show the paths" },
    el("td", {}, el("code", {}, d["set-id"])),
    el("td", { class: "state" }, badge(d.state)),
    el("td", { class: "files" }, files),
    el("td", { class: "bytes" }, size),
    el("td", { class: "verified" }, verified),
    el("td", { class: "pending" }, d.pending),
    el("td", {}, rate === null ? "–" : bytes(rate) + "/s"),
    el("td", {}, duration(d["eta-seconds"])),
    el("td", { class: "deadline" }, deadline),
    el("td", { class: "note" }, d.note || ""));
}

function pathList(title, paths, count) {
  const shown = paths || [];
  const more = count !== undefined && count !== null && count > shown.length
    ? ` (showing ${shown.length} of ${count})` : ` (${shown.length})`;
  return el("div", { class: "pathlist", "data-list": title.toLowerCase() },
    el("h3", {}, title + more),
    shown.length ? el("ul", {}, ...shown.map((p) => el("li", {}, p)))
      : el("p", { class: "muted" }, "none"));
}

function detailRow(d) {
  const td = el("td", { colspan: "10" });
  if (!d) td.append(el("span", { class: "muted" }, "loading…"));
  else if (d["listed-entries"] > 0) {
    td.append(el("p", { class: "muted" },
      `${d["listed-entries"]} uploads were recorded from the S3 listing (their notifications never came).`));
  }
  if (d) td.append(el("div", { class: "paths" },
    pathList("Missing", d["missing-paths"], d.missing),
    pathList("Pending", d["pending-paths"], d.pending),
    pathList("Mismatched", d["mismatched-paths"], d.mismatched),
    pathList("Unexpected", d["unexpected-paths"], d.unexpected),
    pathList("Content mismatch", d["content-mismatch-paths"], (d.content || {}).mismatch),
    pathList("Unverifiable", d["unverifiable-paths"], (d.content || {}).unverifiable)));
  return el("tr", { class: "detail", "data-detail-of": d ? d["set-id"] : ui.open }, td);
}

// Keeps the rows and cells that did not change, so a redraw never pulls a
// row from under a click (or a text selection).
function patchRows(body, rows) {
  const old = new Map();
  for (const tr of body.rows) old.set(rowKey(tr), tr);
  const kept = rows.map((tr) => {
    const prev = old.get(rowKey(tr));
    if (!prev || prev.className !== tr.className || prev.cells.length !== tr.cells.length) return tr;
    [...tr.cells].forEach((cell, i) => {
      if (prev.cells[i].outerHTML !== cell.outerHTML) prev.cells[i].replaceWith(cell);
    });
    return prev;
  });
  kept.forEach((tr, i) => { if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null); });
  while (body.rows.length > kept.length) body.deleteRow(-1);
}

function rowKey(tr) {
  return tr.className + ":" + (tr.dataset.setId || tr.dataset.detailOf || "");
}

function renderDatasets(status) {
  const body = $("datasets").tBodies[0];
  const rows = [];
  for (const d of status.datasets) {
    rows.push(datasetRow(d));
    if (d["set-id"] === ui.open) {
      rows.push(detailRow(ui.detail && ui.detail["set-id"] === ui.open ? ui.detail : null));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "10", class: "muted" }, "No datasets yet.")));
  patchRows(body, rows);
  const totals = Object.entries(status.totals || {}).map(([k, v]) => `${v} ${k}`);
  const all = Object.values(status.totals || {}).reduce((a, b) => a + b, 0);
  $("totals").textContent = totals.length ? `— ${all} in all: ${totals.join(", ")}` : "";
  const page = ui.cursors.length;
  const first = (page - 1) * PAGE + 1;
  $("pageinfo").textContent = status.datasets.length
    ? `page ${page}: ${first}–${first + status.datasets.length - 1} of ${all}` : `page ${page}`;
  ui.next = status.next || null;
  $("next").disabled = !ui.next;
  $("prev").disabled = page <= 1;
  $("first").disabled = page <= 1;
}

function renderPolicies(policies) {
  const rows = (policies || []).map((p) => el("tr", { "data-policy": p.name },
    el("td", {}, p.name), el("td", {}, el("code", {}, p.route)),
    el("td", {}, badge(p.state)), el("td", {}, p.calls),
    el("td", { class: "note" }, p["last-error"] || "")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "Built-in policy only.")));
  $("policies").tBodies[0].replaceChildren(...rows);
}

function renderRecent(decisions) {
  const rows = (decisions || []).map((d) => el("tr", { "data-set-id": d["set-id"] },
    el("td", {}, d.decided || ""), el("td", {}, el("code", {}, d["set-id"])),
    el("td", {}, badge(d.state === "succeeded" ? "Successful" : d.state === "timed-out" ? "Timeout" : d.state, d.state)),
    el("td", { class: "note" }, d.note || "")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4", class: "muted" }, "No decisions yet.")));
  $("recent").tBodies[0].replaceChildren(...rows);
}

function renderHeader(status) {
  const share = status.share || {};
  const shareText = !share.path ? ["share: not watched", "muted"]
    : share.mounted === false ? [`share ${share.path}: NOT MOUNTED`, "bad"]
      : share.mounted ? [`share ${share.path}: mounted`, "ok"] : [`share ${share.path}: checking`, "warn"];
  $("share").replaceWith(Object.assign(badge(shareText[0], shareText[1]), { id: "share" }));
  const reasons = status.health || [];
  const h = badge(reasons.length ? "unhealthy: " + reasons.join("; ") : "healthy", reasons.length ? "bad" : "ok");
  h.id = "health";
  $("health").replaceWith(h);
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  if (ui.busy) { ui.again = true; return; }
  ui.busy = true;
  try {
    const after = ui.cursors[ui.cursors.length - 1];
    let q = `/status?order=active&limit=${PAGE}&recent=${RECENT}`;
    if (after) q += "&after=" + encodeURIComponent(after);
    const status = await getJson(q);
    if (status.now) ui.clockSkewMs = Date.parse(status.now) - Date.now();
    if (ui.open) {
      ui.detail = await getJson("/status/" + encodeURIComponent(ui.open)).catch(() => null);
    }
    ui.last = status;
    renderHeader(status);
    renderDatasets(status);
    renderPolicies(status.policies);
    renderRecent(status["recent-decisions"]);
    $("error").hidden = true;
    $("keyform").hidden = true;
  } catch (e) {
    $("error").textContent = "Cannot read the agent's status: " + e.message;
    $("error").hidden = false;
  } finally {
    ui.busy = false;
  }
  if (ui.again) { ui.again = false; refresh(); }
}

function schedule() {
  clearInterval(ui.timer);
  if ($("auto").checked) ui.timer = setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("datasets").tBodies[0].addEventListener("click", (ev) => {
    const row = ev.target.closest("tr.dataset");
    if (!row) return;
    const id = row.dataset.setId;
    ui.open = ui.open === id ? null : id;
    ui.detail = null;
    if (ui.last) renderDatasets(ui.last);
    refresh();
  });
  $("next").addEventListener("click", () => { if (ui.next) { ui.cursors.push(ui.next); refresh(); } });
  $("prev").addEventListener("click", () => { if (ui.cursors.length > 1) { ui.cursors.pop(); refresh(); } });
  $("first").addEventListener("click", () => { ui.cursors = [null]; refresh(); });
  $("auto").addEventListener("change", schedule);
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    ui.key = $("key").value;
    sessionStorage.setItem("vault-agent-key", ui.key);
    refresh();
  });
  refresh();
  schedule();
});
