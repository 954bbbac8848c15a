"use strict";
const config = (() => {
  try { return JSON.parse(document.getElementById("page-config").textContent.replace("/*PAGE_CONFIG*/", "")); }
  catch (e) { return {}; }
})();
const $ = (id) => document.getElementById(id);
const OUTCOMES = ["record_correct", "record_wrong", "bin_changed", "image_unusable"];
const REASONS = ["lost", "found", "damaged", "misplaced", "data_entry", "other"];
const COUNTABLE = ["requested", "recount_requested"];
let blobUrls = [];
let observer = null;
let renderSerial = 0;
let flash = "";  // a message for the next view (e.g. "task 3 approved"), shown once
const usersMode = config.auditAuth === "users";
let auth = null;  // {user, roles, csrf} once logged in (or, with --audit-auth open, every role); null: log in first

// ---------------------------------------------------------------- small helpers
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;  // through the CSSOM: the page's CSP refuses style attributes
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) node.dataset[k.slice(5).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = String(v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
function showError(message) { $("error").textContent = message || ""; $("error").style.display = message ? "block" : "none"; }
function setStatus(text) { $("status").textContent = text || ""; }
function fmt(x, digits) { return x === null || x === undefined ? "—" : (digits === undefined ? String(x) : Number(x).toFixed(digits)); }
function pct(p) { return (100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1) + "%"; }
function personName() { try { return localStorage.getItem("bintally-audit-name") || ""; } catch (e) { return ""; } }
function rememberName(name) { try { localStorage.setItem("bintally-audit-name", name); } catch (e) { /* storage blocked */ } }
function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
}

if (config.apiKeyRequired) {
  $("key-box").hidden = false;
  try { $("api-key").value = sessionStorage.getItem("bintally-api-key") || ""; } catch (e) { /* storage blocked */ }
  $("api-key").addEventListener("change", () => {
    try { sessionStorage.setItem("bintally-api-key", $("api-key").value); } catch (e) { /* storage blocked */ }
    route();
  });
}
if (config.model) $("model-info").textContent = `model ${config.model} · version ${config.version}`;

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (config.apiKeyRequired && key) h["Authorization"] = "Bearer " + key;
  return h;
}
function has(role) { return !!auth && auth.roles.includes(role); }

async function api(path, options) {
  options = options || {};
  const init = { method: options.method || "GET", headers: authHeaders(options.headers) };
  if (init.method !== "GET" && auth && auth.csrf) init.headers["X-CSRF-Token"] = auth.csrf;  // the session's, on every change
  if (options.json !== undefined) { init.body = JSON.stringify(options.json); init.headers["Content-Type"] = "application/json"; }
  else if (options.body !== undefined) init.body = options.body;
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const why = body && body.error ? body.error : `HTTP ${response.status}`;
    const error = new Error(response.status === 401 && !usersMode ? `${why} — enter the API key above` : why);
    error.status = response.status;
    throw error;
  }
  return { status: response.status, body };
}

function forgetImages() {
  if (observer) { observer.disconnect(); observer = null; }
  for (const url of blobUrls) URL.revokeObjectURL(url);
  blobUrls = [];
}

async function loadImage(img, url) {
  // fetched (not <img src>) so that the API key goes with it; shown through a blob: URL
  try {
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) { img.alt = `no photo (HTTP ${response.status})`; img.dataset.loaded = "error"; return; }
    const blobUrl = URL.createObjectURL(await response.blob());
    blobUrls.push(blobUrl);
    img.src = blobUrl;
    img.dataset.loaded = "true";
  } catch (e) { img.dataset.loaded = "error"; }
}

function lazyImage(img, url) {
  if (!("IntersectionObserver" in window)) { loadImage(img, url); return; }
  if (!observer) {
    observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        observer.unobserve(entry.target);
        loadImage(entry.target, entry.target.dataset.src);
      }
    }, { rootMargin: "200px" });
  }
  img.dataset.src = url;
  observer.observe(img);
}

function setView(name, id) {
  document.body.dataset.view = name;
  document.body.dataset.ready = "";
  document.body.dataset.viewId = id === undefined ? "" : String(id);
}
function ready() { document.body.dataset.ready = document.body.dataset.view + ":" + document.body.dataset.viewId; }

// ---------------------------------------------------------------- router
async function route() {
  const serial = ++renderSerial;
  forgetImages();
  showError("");
  setStatus(flash);
  flash = "";
  $("view").replaceChildren();  // nothing of the previous view stays in the DOM (the blind count view must hold no record)
  const hash = location.hash || "#/runs";
  let m;
  try {
    if (!config.auditEnabled) {
      setView("off");
      showError("The audit API is off: start the server with --audit-db URL.");
      return;
    }
    if (!auth && !(await loadSession(serial))) return;
    showWho();
    if ((m = hash.match(/^#\/runs\/(\d+)$/))) await runView(Number(m[1]), serial);
    else if ((m = hash.match(/^#\/tasks\/(\d+)\/count$/))) await countView(Number(m[1]), serial);
    else if ((m = hash.match(/^#\/tasks\/(\d+)\/review$/))) await reviewView(Number(m[1]), serial);
    else if (hash === "#/mine" || !(has("reviewer") || has("auditor"))) await mineView(serial);
    else await runsView(serial);
  } catch (e) {
    if (serial !== renderSerial) return;
    if (e.status === 401 && usersMode) { auth = null; showWho(); $("view").replaceChildren(); loginView(e.message); return; }
    showError(e.message);
    document.body.dataset.ready = "error";
  }
}
window.addEventListener("hashchange", route);

// ---------------------------------------------------------------- who is logged in: login, session, logout
async function loadSession(serial) {
  // the session of the cookie (a reload), the open mode's every role, or the login form; nothing else is fetched first
  try {
    const { body } = await api("/v1/session");
    if (serial !== renderSerial) return false;
    auth = body;
    return true;
  } catch (e) {
    if (e.status !== 401) throw e;
    if (serial === renderSerial) loginView("");
    return false;
  }
}

function loginView(message) {
  setView("login");
  showWho();
  const token = el("input", { id: "login-token", type: "password", autocomplete: "off", required: true, spellcheck: "false",
    placeholder: "btk_…", "aria-describedby": "login-help" });
  const form = el("form", { id: "login-form", autocomplete: "off" },
    el("div", { class: "field" }, el("label", { for: "login-token", text: "Your token" }), token),
    el("p", { class: "muted", id: "login-help", text: "The token your administrator gave you (bintally audit user add / token rotate). " +
      "It is sent once; the page keeps only a session cookie, which logging out ends." }),
    el("div", { class: "actions" }, el("button", { id: "login-submit", type: "submit", text: "Log in" })));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    $("login-submit").disabled = true;
    try {
      const { body } = await api("/v1/session", { method: "POST", json: { token: token.value.trim() } });
      token.value = "";
      auth = body;
      route();
    } catch (err) {
      token.value = "";
      showError(`Could not log in: ${err.message}`);
      $("login-submit").disabled = false;
    }
  });
  $("view").replaceChildren(el("section", { id: "login-view" }, el("h2", { text: "Log in" }), form));
  if (message) showError(message);
  token.focus();
  ready();
}

function showWho() {
  $("nav-mine").hidden = !has("counter");
  $("nav-runs").hidden = !(has("reviewer") || has("auditor"));
  $("who").hidden = !(usersMode && auth);
  $("who-name").textContent = usersMode && auth ? `${auth.user} (${auth.roles.join(", ")})` : "";
}

async function logout() {
  showError("");
  try { await api("/v1/session", { method: "DELETE" }); }
  catch (e) { if (e.status !== 401) { showError(`Could not log out: ${e.message}`); return; } }
  auth = null;
  forgetImages();
  $("view").replaceChildren();
  if (location.hash && location.hash !== "#/runs") location.hash = "#/runs";  // the next login starts on its own first view
  else route();
}
$("logout").addEventListener("click", logout);

function notAllowed(role) {
  setView("forbidden");
  $("view").replaceChildren(el("section", { id: "forbidden-view" },
    el("p", { text: `This view needs the role ${role}; you hold ${auth.roles.join(", ")}.` })));
  ready();
}

// ---------------------------------------------------------------- the counter's list: tasks open to them, blind
async function mineView(serial) {
  if (!has("counter")) return notAllowed("counter");
  setView("mine");
  const { body } = await api("/v1/tasks");
  if (serial !== renderSerial) return;
  const tasks = body.tasks || [];
  const rows = tasks.map((t) => {
    const img = el("img", { class: "thumb", alt: `bin ${t.bin_id}` });
    lazyImage(img, t.image_url);
    return el("tr", { class: "mine-row", "data-task-id": t.id, "data-bin-id": t.bin_id, "data-status": t.status },
      el("td", {}, img), el("td", { text: t.bin_id }), el("td", {}, el("span", { class: `badge ${t.status}`, text: t.status })),
      el("td", { class: "muted", text: t.assignee ? "assigned to you" : "open" }),
      el("td", {}, el("a", { class: "count-link", href: `#/tasks/${t.id}/count`, text: t.count_index === 1 ? "recount" : "count" })));
  });
  $("view").append(el("section", { id: "mine-section", "data-count": tasks.length },
    el("h2", { text: "Bins to count" }),
    tasks.length ? el("table", { id: "mine" }, el("thead", {}, el("tr", {}, ...["photo", "bin", "status", "", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows))
      : el("p", { class: "muted", id: "no-tasks", text: "Nothing to count now." })));
  ready();
}

async function optional(promise) {
  // a part of a view the user's roles may not reach: null on 403 (the server decides; the page only hides)
  try { return (await promise).body; } catch (e) { if (e.status === 403) return null; throw e; }
}

// ---------------------------------------------------------------- runs: list and create form
function errorsPer100(metrics, group) { return fmt(metrics.by_selection[group].errors_per_100_counts, 1); }

async function runsView(serial) {
  setView("runs");
  const view = $("view");
  const result = el("div", { id: "create-result" });
  const form = el("form", { id: "create-form", enctype: "multipart/form-data" },
    el("p", { class: "muted", text: "The CSV has the columns bin_id,image,record_qty (and optionally captured_at); each image is the file " +
      "name of one of the photos chosen here, or an s3://, https:// or file:// URI the server is allowed to read. The model scores " +
      "every bin; the most suspicious (a budget share, or every score over a threshold) and a random control share become the worklist." }),
    el("div", { class: "form-grid" },
      el("div", {}, el("label", { for: "csv-file", text: "Snapshots (CSV)" }),
         el("input", { id: "csv-file", name: "csv", type: "file", accept: ".csv,text/csv", required: true })),
      el("div", {}, el("label", { for: "photos-file", text: "Photos" }),
         el("input", { id: "photos-file", name: "photos", type: "file", accept: "image/*", multiple: true })),
      el("div", {}, el("label", { for: "run-name", text: "Run name (optional)" }), el("input", { id: "run-name", name: "name", type: "text", maxlength: 200 })),
      el("div", {}, el("label", { for: "run-budget", text: "Budget: share of bins to recount" }),
         el("input", { id: "run-budget", name: "budget", type: "number", min: 0, max: 1, step: "any", placeholder: "0.10" })),
      el("div", {}, el("label", { for: "run-threshold", text: "or threshold: score at least" }),
         el("input", { id: "run-threshold", name: "threshold", type: "number", min: 0, max: 1, step: "any" })),
      el("div", {}, el("label", { for: "run-control", text: "Control: random share of the rest" }),
         el("input", { id: "run-control", name: "control", type: "number", min: 0, max: 1, step: "any", placeholder: "0.02" })),
      el("div", {}, el("label", { for: "run-tolerance", text: "Tolerance before a recount" }),
         el("input", { id: "run-tolerance", name: "tolerance", type: "number", min: 0, step: 1, placeholder: "0" })),
      usersMode ? null : el("div", {}, el("label", { for: "run-by", text: "Created by" }),
         el("input", { id: "run-by", name: "created_by", type: "text", maxlength: 100, value: personName() }))),
    el("div", { class: "actions" }, el("button", { id: "create-submit", type: "submit", text: "Score and create the worklist" })));
  form.addEventListener("submit", (e) => { e.preventDefault(); createRun(form, result); });
  if (has("auditor")) view.append(el("section", { id: "create-section" }, el("h2", { text: "New audit run" }), form, result));
  const runsSection = el("section", { id: "runs-section" }, el("h2", { text: "Runs" }));
  view.append(runsSection);
  await listRuns(runsSection, serial);
  ready();
}

async function listRuns(runsSection, serial) {
  const body = await optional(api("/v1/audit-runs"));
  if (serial !== renderSerial) return;
  const runs = body ? body.runs || [] : [];
  runsSection.replaceChildren(el("h2", { text: "Runs" }));
  runsSection.dataset.count = String(runs.length);
  if (!body) runsSection.append(el("p", { class: "muted", id: "no-runs", text: "Your roles do not list the runs." }));
  else if (!runs.length) runsSection.append(el("p", { class: "muted", id: "no-runs", text: "No audit runs yet." }));
  else {
    const rows = runs.slice().reverse().map((r) => el("tr", { class: "run-row", "data-run-id": r.id, "data-status": r.status },
      el("td", {}, el("a", { href: `#/runs/${r.id}`, class: "run-link", text: r.name })),
      el("td", {}, el("span", { class: "badge", text: r.status })),
      el("td", { class: "num", text: r.metrics.bins }), el("td", { class: "num", text: r.metrics.flagged }),
      el("td", { class: "num", text: r.metrics.counted }), el("td", { class: "num", text: r.metrics.confirmed_errors }),
      el("td", { class: "num", text: `${errorsPer100(r.metrics, "model")} / ${errorsPer100(r.metrics, "control")}` }),
      el("td", { class: "muted", text: `${r.model.version} · ${r.created_by} · ${r.created_at || ""}` })));
    runsSection.append(el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ...["run", "status", "bins", "flagged", "counted", "confirmed errors", "errors / 100 counts (model / control)", "model · by · created"]
        .map((h, i) => el("th", { class: i >= 2 && i <= 6 ? "num" : "", text: h })))),
      el("tbody", {}, rows)));
  }
}

async function createRun(form, result) {
  showError("");
  const button = $("create-submit");
  button.disabled = true;
  result.replaceChildren();
  delete result.dataset.runId;
  setStatus("uploading and scoring…");
  const by = usersMode ? "" : $("run-by").value.trim();
  if (by) rememberName(by);
  try {
    const { status, body } = await api("/v1/audit-runs", { method: "POST", body: new FormData(form) });
    setStatus("");
    const m = body.metrics;
    result.append(el("div", { class: "notice", id: "create-notice" },
      `${status === 201 ? "Created" : "Already there (same snapshots and settings)"}: `,
      el("a", { id: "open-run", href: `#/runs/${body.id}`, text: body.name }),
      ` — ${m.bins} bins scored, ${m.flagged} flagged, ${m.control} control.`));
    if (body.unreadable && body.unreadable.length) {
      result.append(el("p", { text: `${body.unreadable.length} photo(s) could not be read:` }),
        el("ul", { class: "plain", id: "unreadable" }, body.unreadable.map((u) =>
          el("li", { "data-bin-id": u.bin_id, text: `${u.bin_id} (${u.image}): ${u.problem}` }))));
    }
    if (body.unused_photos && body.unused_photos.length) {
      result.append(el("p", { class: "muted", id: "unused", text: `Not named in the CSV (not stored): ${body.unused_photos.join(", ")}` }));
    }
    result.dataset.runId = String(body.id);
    if ($("runs-section")) await listRuns($("runs-section"), renderSerial);  // the list below, with the new run
  } catch (e) {
    setStatus("");
    showError(`Could not create the run: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- one run: summary and worklist
function metric(id, label, value) {
  return el("div", { class: "metric" }, el("dt", { text: label }), el("dd", { id, "data-value": value === null || value === undefined ? "" : value, text: fmt(value) }));
}

function probBars(probabilities, record) {
  const box = el("div", { class: "probs", title: "probability of each count (the record's in orange)" });
  for (const [label, p] of Object.entries(probabilities || {})) {
    const isRecord = label === String(record) || (label.endsWith("+") && record >= parseInt(label, 10));
    box.append(el("div", { class: "prob" + (isRecord ? " is-record" : ""), "data-label": label, "data-probability": p, title: `${label}: ${pct(p)}` },
      el("div", { class: "fill", style: `height:${Math.max(1, Math.round(100 * p))}%` }), el("div", { class: "lab", text: label })));
  }
  return box;
}

async function runView(runId, serial) {
  setView("run", runId);
  const view = $("view");
  if (!(has("reviewer") || has("auditor"))) return notAllowed("reviewer or auditor");
  const [run, list] = await Promise.all([optional(api(`/v1/audit-runs/${runId}`)),
    has("reviewer") ? optional(api(`/v1/audit-runs/${runId}/tasks`)) : null]);
  if (serial !== renderSerial) return;
  const worklist = list ? worklistSection(list.tasks || [], run ? Object.keys(run.metrics.statuses) : []) : null;
  $("view").append(run ? runSummary(run) : el("section", { id: "summary" }, el("h2", { text: `Run ${runId}` })));
  if (worklist) $("view").append(worklist.section);
  if (has("auditor")) $("view").append(el("section", { id: "export-section" },
    el("a", { id: "labels-link", href: "#", text: "download approved labels (CSV)", onclick: downloadLabels })));
  if (worklist) worklist.draw();
  ready();
}

function runSummary(run) {
  const m = run.metrics;
  return el("section", { id: "summary", "data-run-id": run.id },
    el("h2", { text: `Run ${run.name}` }),
    el("p", { class: "muted", text: `model ${run.model.name} ${run.model.version} · ${run.status} · by ${run.created_by} · ${run.created_at || ""}` +
      (run.settings.budget !== null && run.settings.budget !== undefined ? ` · budget ${run.settings.budget}` : ` · threshold ${run.settings.threshold}`) +
      ` · control ${run.settings.control} · tolerance ${run.settings.tolerance}` }),
    el("dl", { class: "metrics" },
      metric("m-bins", "bins scored", m.bins), metric("m-unreadable", "unreadable", m.unreadable),
      metric("m-flagged", "flagged (model)", m.flagged), metric("m-control", "control", m.control),
      metric("m-counted", "counted", m.counted), metric("m-confirmed-errors", "confirmed errors", m.confirmed_errors),
      metric("m-errors-model", "errors / 100 counts, model", m.by_selection.model.errors_per_100_counts),
      metric("m-errors-control", "errors / 100 counts, control", m.by_selection.control.errors_per_100_counts),
      metric("m-missed", "estimated missed errors", m.estimated_missed_errors)),
    el("p", { class: "muted", id: "m-statuses", text: Object.entries(m.statuses).map(([k, v]) => `${k} ${v}`).join(" · ") }));
}

function worklistSection(list, statuses) {
  // the reviewer's worklist: record, prediction, score and probabilities; count links only for a counter too
  const shown = statuses.length ? statuses : [...new Set(list.map((t) => t.status))];
  const select = el("select", { id: "status-filter", "aria-label": "show tasks with status" },
    el("option", { value: "", text: "every status" }), ...shown.map((s) => el("option", { value: s, text: s })));
  const tbody = el("tbody", {});
  const tasks = list.slice().sort((a, b) => b.score - a.score || a.rank - b.rank);
  const draw = () => {
    forgetImages();
    tbody.replaceChildren();
    for (const t of tasks) {
      if (select.value && t.status !== select.value) continue;
      const img = el("img", { class: "thumb", alt: `bin ${t.bin_id}` });
      lazyImage(img, t.image_url);
      tbody.append(el("tr", { class: "task-row", "data-task-id": t.id, "data-status": t.status, "data-score": t.score, "data-bin-id": t.bin_id },
        el("td", { class: "num", text: t.rank }), el("td", {}, img),
        el("td", {}, t.bin_id, t.selected_by === "control" ? el("div", {}, el("span", { class: "badge control", text: "control" })) : null),
        el("td", { class: "num task-record", text: t.record_qty }), el("td", { class: "num task-predicted", text: t.predicted }),
        el("td", { class: "num", text: fmt(t.expected, 2) }), el("td", { class: "num task-score", text: fmt(t.score, 3) }),
        el("td", {}, probBars(t.probabilities, t.record_qty)),
        el("td", { class: "explanation task-explanation", text: t.explanation || "" }),
        el("td", {}, el("span", { class: `badge task-status ${t.status}`, text: t.status })),
        el("td", {}, has("counter") && COUNTABLE.includes(t.status) ? [el("a", { class: "count-link", href: `#/tasks/${t.id}/count`, text: "count" }), " · "] : null,
          el("a", { class: "review-link", href: `#/tasks/${t.id}/review`, text: "review" }))));
    }
  };
  select.addEventListener("change", draw);
  const table = el("table", { id: "worklist" },
    el("thead", {}, el("tr", {}, ...["rank", "photo", "bin", "record", "predicted", "expected", "score", "P(count)", "why flagged", "status", ""]
      .map((h, i) => el("th", { class: [0, 3, 4, 5, 6].includes(i) ? "num" : "", text: h })))), tbody);
  const section = el("section", { id: "worklist-section" },
    el("h2", { text: "Worklist (most suspicious first)" }),
    el("div", { class: "actions" }, select, el("a", { href: "#/runs", text: "all runs" })),
    tasks.length ? table : el("p", { class: "muted", text: "No tasks in this run." }));
  return { section, draw };
}

async function downloadLabels(e) {
  e.preventDefault();
  try {
    const response = await fetch("/v1/labels/export", { headers: authHeaders() });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    const a = el("a", { href: url, download: "bintally-labels.csv" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) { showError(`Could not export the labels: ${err.message}`); }
}

// ---------------------------------------------------------------- the counter's blind view
function size(line) {
  const dims = [line.length_in, line.width_in, line.height_in];
  const parts = [];
  if (dims.every((d) => d !== null && d !== undefined)) parts.push(dims.map((d) => Number(d).toFixed(1)).join(" × ") + " in");
  if (line.weight_lb !== null && line.weight_lb !== undefined) parts.push(`${Number(line.weight_lb).toFixed(2)} lb`);
  return parts.join(", ") || "—";
}

function wholeOrNull(input) {
  const text = input.value.trim();
  const n = Number(text);
  return text !== "" && Number.isInteger(n) && n >= 0 ? n : null;
}

function lineCountFields(task) {
  // one input per SKU to count (its size shown to recognise it); never a recorded quantity
  const rows = task.lines.map((line, i) => el("tr", { class: "count-line", "data-sku": line.sku },
    el("td", { class: "sku", text: line.sku }), el("td", { class: "muted size", text: size(line) }),
    el("td", {}, el("input", { id: `count-line-${i}`, class: "line-qty", type: "number", min: 0, step: 1, required: true,
      inputmode: "numeric", "data-sku": line.sku, "aria-label": `how many of ${line.sku}` }))));
  const found = el("tbody", { id: "found-lines" });
  const addFound = el("button", { id: "add-found", type: "button", class: "secondary", text: "Add a SKU that is not listed" });
  addFound.addEventListener("click", () => {
    const i = found.children.length;
    found.append(el("tr", { class: "found-line" },
      el("td", {}, el("input", { id: `found-sku-${i}`, class: "found-sku", type: "text", maxlength: 200, placeholder: "SKU", "aria-label": "SKU found" })),
      el("td", {}, el("input", { id: `found-qty-${i}`, class: "line-qty found-qty", type: "number", min: 1, step: 1, inputmode: "numeric",
        "aria-label": "how many found" }))));
  });
  return el("div", { class: "field", id: "count-lines" },
    el("label", { text: "How many of each SKU are in the bin? (0 when there is none)" }),
    el("table", { class: "line-table" }, el("thead", {}, el("tr", {}, el("th", { text: "SKU" }), el("th", { text: "size, weight" }), el("th", { text: "items" }))),
      el("tbody", {}, rows)),
    el("table", { class: "line-table" }, found), el("div", { class: "actions" }, addFound));
}

function lineCounts() {
  // {lines, found} from the form, or a message saying what is wrong
  const lines = {}, found = {};
  for (const input of document.querySelectorAll("#count-lines input.line-qty[data-sku]")) {
    const n = wholeOrNull(input);
    if (n === null) return { error: `Enter how many of ${input.dataset.sku} are in the bin as a whole number (0 when none).` };
    lines[input.dataset.sku] = n;
  }
  for (const row of document.querySelectorAll("#found-lines tr.found-line")) {
    const sku = row.querySelector(".found-sku").value.trim();
    const qtyInput = row.querySelector(".found-qty");
    if (!sku && qtyInput.value.trim() === "") continue;
    const n = wholeOrNull(qtyInput);
    if (!sku || n === null || n < 1) return { error: "Give each SKU you found with how many (1 or more)." };
    found[sku] = n;
  }
  return Object.keys(found).length ? { lines, found } : { lines };
}

async function countView(taskId, serial) {
  if (!has("counter")) return notAllowed("counter");
  setView("count", taskId);
  // only the blind view of the task is fetched here: bin id, photo, status, the SKUs to count; never a recorded quantity or the prediction
  const { body: task } = await api(`/v1/tasks/${taskId}`);
  if (serial !== renderSerial) return;
  const perLine = (task.lines || []).length > 0;
  const photo = el("img", { id: "count-photo", class: "photo", alt: `bin ${task.bin_id}` });
  loadImage(photo, task.image_url);
  const idempotencyKey = newKey();  // one per opened form: a retried or doubled submit is counted once
  const result = el("div", { id: "count-result" });
  const form = el("form", { id: "count-form", autocomplete: "off" },
    perLine ? lineCountFields(task)
            : el("div", { class: "field" }, el("label", { for: "count-qty", text: "How many items are in the bin?" }),
                 el("input", { id: "count-qty", type: "number", min: 0, step: 1, required: true, inputmode: "numeric" })),
    usersMode ? null : el("div", { class: "field" }, el("label", { for: "count-by", text: "Counted by" }),
       el("input", { id: "count-by", type: "text", required: true, maxlength: 100, value: personName() })),
    el("div", { class: "field" }, el("label", { for: "count-comment", text: "Comment (optional)" }),
       el("textarea", { id: "count-comment", rows: 2, maxlength: 2000 })),
    el("div", { class: "actions" }, el("button", { id: "count-submit", type: "submit", text: "Submit count", disabled: !task.accepts_count })));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    let counted;
    if (perLine) {
      counted = lineCounts();
      if (counted.error) { showError(counted.error); return; }
    } else {
      const qty = wholeOrNull($("count-qty"));
      if (qty === null) { showError("Enter the number of items as a whole number."); return; }
      counted = { qty };
    }
    const by = usersMode ? null : $("count-by").value.trim();  // with users, the name comes from the session
    if (by) rememberName(by);
    $("count-submit").disabled = true;
    try {
      const comment = $("count-comment").value.trim();
      const { body } = await api(`/v1/tasks/${taskId}/counts`, { method: "POST", headers: { "Idempotency-Key": idempotencyKey },
        json: Object.assign(counted, by ? { by } : {}, { count_index: task.count_index }, comment ? { comment } : {}) });
      $("count-state").textContent = body.status;
      $("count-state").className = `badge ${body.status}`;
      result.dataset.status = body.status;
      result.replaceChildren(el("div", { class: "notice", id: "count-notice" },
        body.status === "recount_requested" ? "Count saved. A second blind count of this bin is asked for." : "Count saved. Thank you.",
        " ", el("a", { id: "back-to-run", href: has("reviewer") ? `#/runs/${task.run_id}` : "#/mine", text: "back to the worklist" })));
    } catch (err) {
      showError(`Could not record the count: ${err.message}`);
      $("count-submit").disabled = false;
    }
  });
  const which = task.count_index === 1 ? "second (recount)" : "first";
  $("view").append(el("section", { id: "count-view", "data-task-id": task.id, "data-per-line": perLine ? "true" : "false" },
    el("h2", { text: "Blind count" }),
    el("div", { class: "task-layout" },
      el("div", {}, photo),
      el("div", {},
        el("dl", { class: "facts" }, el("dt", { text: "bin" }), el("dd", { id: "count-bin", text: task.bin_id }),
           el("dt", { text: "status" }), el("dd", {}, el("span", { id: "count-state", class: `badge ${task.status}`, text: task.status }))),
        task.accepts_count ? el("p", { class: "muted", text: `Count every item in the bin yourself (${which} count)` +
                                        (perLine ? ", SKU by SKU." : ".") })
                           : el("p", { class: "muted", id: "count-closed", text: "This task takes no count now." }),
        form, result))));
  if (task.accepts_count) (perLine ? $("count-line-0") : $("count-qty")).focus();
  ready();
}

// ---------------------------------------------------------------- the reviewer's view
function reviewLines(t) {
  // per SKU: the record, both counts, the final quantity (the last count's, to change) and its variance
  const rows = t.lines.map((line, i) => {
    const final = line.final_qty ?? line.recount ?? line.count ?? "";
    const input = el("input", { id: `review-line-${i}`, class: "line-qty final-line", type: "number", min: 0, step: 1, value: final,
      "data-sku": line.sku, "data-record": line.record_qty, "aria-label": `final quantity of ${line.sku}` });
    const variance = el("td", { class: "num line-variance" });
    const update = () => {
      const n = wholeOrNull(input);
      const v = n === null ? null : n - line.record_qty;
      variance.textContent = v === null ? "—" : (v > 0 ? `+${v}` : String(v));
      variance.className = "num line-variance" + (v ? " variance-off" : "");
      if ($("review-final")) $("review-final").value = finalSum();
    };
    input.addEventListener("input", update);
    const row = el("tr", { class: "review-line", "data-sku": line.sku, "data-on-record": line.on_record ? "true" : "false" },
      el("td", { class: "sku", title: size(line), text: line.sku + (line.on_record ? "" : " (found)") }),
      el("td", { class: "num line-record", text: line.record_qty }), el("td", { class: "num line-count", text: fmt(line.count) }),
      el("td", { class: "num line-recount", text: fmt(line.recount) }), el("td", {}, input), variance);
    update();
    return row;
  });
  return el("div", { class: "line-scroll" }, el("table", { id: "review-lines", class: "line-table" },
    el("thead", {}, el("tr", {}, ...["SKU", "record", "count", "recount", "final", "variance"]
      .map((h, i) => el("th", { class: [1, 2, 3, 5].includes(i) ? "num" : "", text: h })))),
    el("tbody", {}, rows)));
}

function finalLines() {
  const finals = {};
  for (const input of document.querySelectorAll("#review-lines input.final-line")) {
    const n = wholeOrNull(input);
    if (n === null) return null;
    finals[input.dataset.sku] = n;
  }
  return finals;
}

function linesSum(lines) {
  const finals = lines.map((line) => line.final_qty ?? line.recount ?? line.count);
  return finals.some((f) => f === null || f === undefined) ? "" : finals.reduce((a, b) => a + b, 0);
}

function finalSum() {
  const finals = finalLines();
  return finals === null ? "" : Object.values(finals).reduce((a, b) => a + b, 0);
}

async function reviewView(taskId, serial) {
  if (!has("reviewer")) return notAllowed("reviewer");
  setView("review", taskId);
  const { body: t } = await api(`/v1/tasks/${taskId}/review`);
  if (serial !== renderSerial) return;
  const photo = el("img", { id: "review-photo", class: "photo", alt: `bin ${t.bin_id}` });
  loadImage(photo, t.image_url);
  const bars = el("div", { class: "bars", id: "review-bars" });
  for (const [label, p] of Object.entries(t.probabilities || {})) {
    const isRecord = label === String(t.record_qty) || (label.endsWith("+") && t.record_qty >= parseInt(label, 10));
    bars.append(el("div", { style: "display:contents", class: isRecord ? "is-record" : "", "data-label": label, "data-probability": p },
      el("div", { class: "lab", text: label }), el("div", { class: "track" }, el("div", { class: "fill", style: `width:${(100 * p).toFixed(2)}%` })),
      el("div", { class: "pct", text: pct(p) })));
  }
  const counts = el("ul", { class: "plain", id: "review-counts" }, t.counts.length ? t.counts.map((c) =>
    el("li", { "data-count-index": c.count_index, "data-qty": c.qty, text: `${c.count_index === 0 ? "count" : "recount"}: ${c.qty} by ${c.by}${c.comment ? ` — ${c.comment}` : ""} (${c.at})` }))
    : [el("li", { class: "muted", text: "not counted yet" })]);
  const last = t.counts.length ? t.counts[t.counts.length - 1].qty : "";
  const perLine = (t.lines || []).length > 0;
  const lineTable = perLine ? reviewLines(t) : null;
  const form = el("form", { id: "review-form", autocomplete: "off" },
    lineTable,
    el("div", { class: "form-grid" },
      el("div", {}, el("label", { for: "review-final", text: perLine ? "Final quantity (the lines' sum)" : "Final quantity" }),
         el("input", { id: "review-final", type: "number", min: 0, step: 1, value: perLine ? linesSum(t.lines) : last, readonly: perLine })),
      el("div", {}, el("label", { for: "review-outcome", text: "Outcome" }),
         el("select", { id: "review-outcome" }, el("option", { value: "", text: "from the final quantity" }), OUTCOMES.map((o) => el("option", { value: o, text: o })))),
      el("div", {}, el("label", { for: "review-reason", text: "Reason (when the record was wrong)" }),
         el("select", { id: "review-reason" }, el("option", { value: "", text: "—" }), REASONS.map((r) => el("option", { value: r, text: r })))),
      usersMode ? null : el("div", {}, el("label", { for: "review-by", text: "Reviewed by" }),
         el("input", { id: "review-by", type: "text", maxlength: 100, value: personName() }))),
    el("div", { class: "field", style: "margin-top:10px" }, el("label", { for: "review-comment", text: "Comment (optional)" }),
       el("textarea", { id: "review-comment", rows: 2, maxlength: 2000 })),
    el("div", { class: "actions" },
      el("button", { id: "review-approve", type: "button", text: "Approve", disabled: t.status !== "in_review" }),
      el("button", { id: "review-reject", type: "button", class: "danger", text: "Reject", disabled: t.status !== "in_review" })));
  const result = el("div", { id: "review-result" });
  const submit = async (approve) => {
    showError("");
    const finalText = $("review-final").value.trim();
    const by = usersMode ? "" : $("review-by").value.trim();
    const doc = by ? { approve, by } : { approve };
    if (perLine) {
      const finals = finalLines();
      if (finals === null) { showError("Enter every SKU's final quantity as a whole number."); return; }
      doc.final_lines = finals;
    } else if (finalText !== "") doc.final = Number(finalText);
    if ($("review-outcome").value) doc.outcome = $("review-outcome").value;
    if ($("review-reason").value) doc.reason = $("review-reason").value;
    if ($("review-comment").value.trim()) doc.comment = $("review-comment").value.trim();
    if (by) rememberName(by);
    $("review-approve").disabled = $("review-reject").disabled = true;
    try {
      const { body } = await api(`/v1/tasks/${taskId}/review`, { method: "POST", json: doc });
      result.dataset.status = body.status;
      flash = `task ${taskId} ${body.status}: final ${fmt(body.resolution.final_qty)}, ${body.resolution.outcome || "no outcome"}`;
      location.hash = `#/runs/${t.run_id}`;  // back to the worklist: the task's new status and the run's metrics
    } catch (err) {
      showError(`Could not review the task: ${err.message}`);
      $("review-approve").disabled = $("review-reject").disabled = false;
    }
  };
  form.querySelector("#review-approve").addEventListener("click", () => submit(true));
  form.querySelector("#review-reject").addEventListener("click", () => submit(false));
  const r = t.resolution;
  $("view").append(el("section", { id: "review-view", "data-task-id": t.id, "data-status": t.status },
    el("h2", { text: `Review task ${t.id}` }),
    el("div", { class: "task-layout" },
      el("div", {}, photo),
      el("div", {},
        el("dl", { class: "facts" },
          el("dt", { text: "bin" }), el("dd", { text: t.bin_id }),
          el("dt", { text: "status" }), el("dd", {}, el("span", { id: "review-status", class: `badge ${t.status}`, text: t.status })),
          el("dt", { text: "record" }), el("dd", { id: "review-record", text: t.record_qty }),
          el("dt", { text: "predicted" }), el("dd", { id: "review-predicted", text: `${t.predicted} (expected ${fmt(t.expected, 2)})` }),
          el("dt", { text: "score" }), el("dd", { text: `${fmt(t.score, 3)} (rank ${t.rank}, ${t.selected_by})` }),
          el("dt", { text: "why flagged" }), el("dd", { id: "review-explanation", class: "explanation", text: t.explanation || "—" })),
        bars,
        el("h2", { text: "Counts" }), counts,
        r ? el("p", { id: "review-resolution", text: `${r.decision} by ${r.reviewed_by}: final ${fmt(r.final_qty)}, ${r.outcome || "no outcome"}${r.reason ? `, ${r.reason}` : ""}` }) : null,
        form, result,
        el("p", {}, el("a", { id: "back-to-run", href: `#/runs/${t.run_id}`, text: "back to the worklist" }))))));
  ready();
}

route();
