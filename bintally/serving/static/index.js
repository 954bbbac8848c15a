"use strict";
const config = (() => {
  try { return JSON.parse(document.getElementById("page-config").textContent.replace("/*PAGE_CONFIG*/", "")); }
  catch (e) { return {}; }
})();
const countUrl = config.countUrl || "/v1/count";
const $ = (id) => document.getElementById(id);
let samples = [];
let busy = false;
let samplesProblem = "";

if (config.apiKeyRequired) {
  $("key-box").hidden = false;
  try { $("api-key").value = sessionStorage.getItem("bintally-api-key") || ""; } catch (e) { /* storage blocked */ }
  $("api-key").addEventListener("change", () => {
    try { sessionStorage.setItem("bintally-api-key", $("api-key").value); } catch (e) { /* storage blocked */ }
    if (!samples.length) loadSamples();
  });
}
if (config.model) {
  $("model-info").textContent = `model ${config.model} · version ${config.version} · ${config.backend}`;
}

function headers() {
  const h = {};
  const key = $("api-key").value.trim();
  if (config.apiKeyRequired && key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").style.display = message ? "block" : "none";
}

function setStatus(text) { $("status").textContent = text; }

function pct(p) { return (100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1) + "%"; }

function showResult(result, ms) {
  $("result").classList.remove("empty");
  $("count").textContent = result.label;
  $("count").dataset.count = String(result.count);
  $("confidence").textContent = pct(result.confidence);
  $("expected").textContent = Number(result.expected_count).toFixed(2);
  const bars = $("bars");
  bars.replaceChildren();
  for (const [label, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("div");
    row.style.display = "contents";
    row.className = "bar" + (label === result.label ? " chosen" : "");
    row.dataset.label = label;
    row.dataset.probability = String(p);
    const lab = document.createElement("div"); lab.className = "lab"; lab.textContent = label;
    const track = document.createElement("div"); track.className = "track";
    const fill = document.createElement("div"); fill.className = "fill"; fill.style.width = (100 * p).toFixed(2) + "%";
    track.appendChild(fill);
    const val = document.createElement("div"); val.className = "pct"; val.textContent = pct(p);
    row.append(lab, track, val);
    bars.appendChild(row);
  }
  setStatus(`counted in ${ms} ms`);
  document.body.dataset.state = "done";
}

function firstResult(body) {
  if (body && Array.isArray(body.results)) return body.results[0];
  if (body && Array.isArray(body.predictions)) return body.predictions[0];
  if (Array.isArray(body)) return body[0];
  return body;
}

async function countBlob(blob, name, recorded) {
  if (busy) return;
  busy = true;
  document.body.dataset.state = "counting";
  showError("");
  setStatus(`counting ${name}…`);
  $("preview").src = URL.createObjectURL(blob);
  $("preview").style.display = "block";
  $("preview-name").textContent = name;
  $("recorded-line").hidden = recorded === undefined || recorded === null;
  $("recorded").textContent = recorded ?? "–";
  $("count").dataset.count = "";
  const form = new FormData();
  form.append("file", blob, name);
  const t0 = performance.now();
  try {
    const response = await fetch(countUrl, { method: "POST", body: form, headers: headers() });
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      const why = body && body.error ? body.error : `HTTP ${response.status}`;
      throw new Error(response.status === 401 ? `${why} — enter the API key above` : why);
    }
    const result = firstResult(body);
    if (!result || result.count === undefined) throw new Error("the server's answer holds no count");
    showResult(result, Math.round(performance.now() - t0));
  } catch (e) {
    document.body.dataset.state = "error";
    setStatus("");
    showError(`Could not count ${name}: ${e.message}`);
  } finally {
    busy = false;
  }
}

function countFile(file) {
  if (!file) return;
  if (config.maxBodyBytes && file.size > config.maxBodyBytes) {
    showError(`${file.name} is ${file.size.toLocaleString()} bytes; the server takes at most ${config.maxBodyBytes.toLocaleString()}`);
    return;
  }
  countBlob(file, file.name);
}

async function countSample(name) {
  if (!name) return;
  const entry = samples.find((s) => s.name === name);
  $("file").value = "";
  try {
    const response = await fetch("/samples/" + encodeURIComponent(name), { headers: headers() });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    await countBlob(await response.blob(), name, entry ? entry.expected_quantity : undefined);
  } catch (e) {
    showError(`Could not load the sample ${name}: ${e.message}`);
  }
}

$("file").addEventListener("change", (e) => { countFile(e.target.files[0]); e.target.value = ""; });  // the same file again counts again
const drop = $("drop");
drop.addEventListener("click", (e) => { if (e.target !== $("file")) $("file").click(); });
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => countFile(e.dataTransfer.files[0]));
// a photo dropped anywhere else on the page is counted too, instead of the browser navigating away to it
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer && e.dataTransfer.files[0]) countFile(e.dataTransfer.files[0]); });

$("sample-count").addEventListener("click", () => countSample($("sample").value));
$("sample-random").addEventListener("click", () => {
  if (!samples.length) return;
  const pick = samples[Math.floor(Math.random() * samples.length)];
  $("sample").value = pick.name;
  countSample(pick.name);
});

async function thumbnail(img, name) {
  // fetched (not <img src>) so that the API key header goes with it when the server wants one
  try {
    const response = await fetch("/samples/" + encodeURIComponent(name), { headers: headers() });
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  } catch (e) { /* the thumbnail stays empty */ }
}

async function loadSamples() {
  samplesProblem = "";
  try {
    const response = await fetch("/samples", { headers: headers() });
    if (!response.ok) throw new Error(response.status === 401 ? "enter the API key to see the samples" : `HTTP ${response.status}`);
    samples = (await response.json()).samples || [];
  } catch (e) {
    samples = [];
    samplesProblem = e.message;
  }
  const select = $("sample");
  select.replaceChildren();
  $("thumbs").replaceChildren();
  $("sample-count").disabled = $("sample-random").disabled = !samples.length;
  if (!samples.length) {
    select.append(new Option(samplesProblem ? `no samples (${samplesProblem})` : "no samples", ""));
    return;
  }
  for (const s of samples) {
    const q = s.expected_quantity;
    select.append(new Option(q === null || q === undefined ? s.name : `${s.name} (recorded ${q})`, s.name));
  }
  const thumbs = $("thumbs");
  const step = Math.max(1, Math.floor(samples.length / 6));
  for (let i = 0; i < 6 && i * step < samples.length; i++) {
    const s = samples[i * step + Math.floor(step / 2)] || samples[i * step];
    const img = document.createElement("img");
    thumbnail(img, s.name);
    img.alt = "sample " + s.name;
    img.title = s.name;
    img.tabIndex = 0;
    img.addEventListener("click", () => { $("sample").value = s.name; countSample(s.name); });
    img.addEventListener("keydown", (e) => { if (e.key === "Enter") { $("sample").value = s.name; countSample(s.name); } });
    thumbs.appendChild(img);
  }
  document.body.dataset.samples = String(samples.length);
}
loadSamples();
