// Index jobs from the Index panel: first a dry run's estimate, then (on Start) the job with
// live progress over server-sent events (polling if the stream breaks), Cancel and the result.

import { api } from "./api.js";
import { $, show, togglePanel } from "./dom.js";
import { countOf, formatDuration, formatNumber } from "./format.js";

const JOB_LABELS = { describe: "Describe", embed: "Embed", index: "Index" };
const FINISHED = new Set(["done", "failed", "cancelled"]); // a job's final states (GET /api/jobs/{id})

let current = null; // the job shown: {kind, limit, live} for an estimate, {id, kind, live, source, ...} once started
const hooks = { generation: () => null, onFinished: async () => {} };

function jobLimit() {
  const value = parseInt($("job-limit").value, 10);
  return value > 0 ? value : undefined;
}

/** First the dry run: what it would do and cost; nothing starts until Start is pressed. */
async function estimateJob(kind) {
  if (current && current.live) return;
  current = { kind, limit: jobLimit(), live: false };
  setJobButtons(true);
  showJob(`${JOB_LABELS[kind]}: estimating…`, { cancel: true });
  let estimate;
  try {
    const created = await api("api/jobs", { json: { kind, dry_run: true, limit: current.limit } });
    estimate = await finalJob(created);
  } catch (err) {
    showJob(`${JOB_LABELS[kind]}: ${err.message}`, { dismiss: true });
    setJobButtons(false);
    current = null;
    return;
  }
  if (!current || current.live) return;
  showJob(`${estimateText(kind, estimate)} Nothing has been sent yet.`, { confirm: true, cancel: true });
  $("job-confirm").textContent = `Start ${JOB_LABELS[kind].toLowerCase()}`;
  $("job-confirm").focus();
}

/** A dry run takes a moment (it scans the folder); wait for its final state. */
async function finalJob(created) {
  let job = created;
  for (let i = 0; i < 600 && job && job.id && !FINISHED.has(job.state); i++) {
    await new Promise((r) => setTimeout(r, i < 10 ? 100 : 500));
    job = await api(`api/jobs/${encodeURIComponent(created.id)}`);
  }
  if (job && job.state === "failed") throw new Error(job.error || "the estimate failed");
  return job || {};
}

/** The dry run's answer in words: what would be described (and what it costs), what embedded. */
function estimateText(kind, job) {
  const e = job.estimate || {};
  const parts = [];
  if (kind !== "embed") {
    const photos = e.photos || 0;
    parts.push(photos ? `Would describe ${countOf(photos, "photo")}` : "No photo needs describing");
    if (photos && (e.prompt_tokens || e.completion_tokens)) {
      parts.push(`: ~${formatNumber(e.prompt_tokens || 0)} input + ~${formatNumber(e.completion_tokens || 0)} output tokens`);
    }
    if (photos && typeof e.cost_usd === "number") parts.push(`, ~$${e.cost_usd.toFixed(e.cost_usd < 1 ? 3 : 2)}`);
    if (photos && e.seconds) parts.push(`, about ${formatDuration(e.seconds)}`);
    if (photos && kind === "index") parts.push(", then embed them");
    parts.push(".");
    if (e.runs > 1) parts.push(` The daily limit spreads it over ${e.runs} runs.`);
  }
  if (kind !== "describe") {
    const waiting = e.embed || 0;
    if (waiting) parts.push(`${parts.length ? " " : ""}Would embed ${countOf(waiting, "description")} waiting (on this machine: no vision request).`);
    else if (kind === "embed") parts.push(e.update_index ? "Would update the index (photos moved or deleted)." : "Nothing to embed: the index is up to date.");
  }
  return parts.join("");
}

async function startJob() {
  const pending = current;
  if (!pending || pending.live) return;
  pending.live = true;
  showJob(`${JOB_LABELS[pending.kind]}: starting…`, { cancel: true, progress: true });
  try {
    const created = await api("api/jobs", { json: { kind: pending.kind, limit: pending.limit } });
    followJob(created.id, pending.kind);
  } catch (err) {
    showJob(`${JOB_LABELS[pending.kind]}: ${err.message}`, { dismiss: true });
    current = null;
    setJobButtons(false);
  }
}

/** A job the status says is running (started from another tab, or before a reload): follow
 * it. Not a dry run (its estimate is this page's own question), nor over an estimate shown here. */
export function followRunning(running) {
  if (running && running.id && !running.dry_run && !FINISHED.has(running.state) && !(current && current.id === running.id)
      && !(current && !current.live)) followJob(running.id, running.kind);
}

/** Live progress over SSE, falling back to polling if the stream breaks. */
function followJob(id, kind) {
  if (current && current.source) current.source.close();
  current = { id, kind: kind || "index", live: true, source: null, generationBefore: hooks.generation() };
  setJobButtons(true);
  togglePanel($("status"), $("status-toggle"), true);
  showJob(`${JOB_LABELS[current.kind] || "Job"}: starting…`, { cancel: true, progress: true });
  const job = current;
  if (window.EventSource) {
    const source = new EventSource(`api/jobs/${encodeURIComponent(id)}/events`);
    job.source = source;
    const onEvent = (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      jobUpdate(job, data);
    };
    source.addEventListener("job", onEvent); // every event is the whole job, as GET /api/jobs/{id}
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED || job.finished) {
        source.close();
        if (!job.finished) pollJob(job);
      }
    };
  } else pollJob(job);
}

async function pollJob(job) {
  while (!job.finished && current === job) {
    try {
      jobUpdate(job, await api(`api/jobs/${encodeURIComponent(job.id)}`));
    } catch (err) {
      showJob(`Lost the job: ${err.message}`, { dismiss: true });
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function jobUpdate(job, data) {
  if (job.finished || current !== job) return;
  const label = JOB_LABELS[data.kind || job.kind] || "Job";
  const done = data.done ?? 0;
  const total = data.total ?? null;
  const failed = data.failed ?? 0;
  const phase = data.phase || data.stage;
  const counts = total ? `${formatNumber(done)} of ${formatNumber(total)}` : formatNumber(done);
  const failedText = failed ? `, ${formatNumber(failed)} failed` : "";
  if (FINISHED.has(data.state)) {
    job.finished = true;
    if (job.source) job.source.close();
    const verb = data.state; // done, cancelled or failed
    showJob(`${label} ${verb}: ${resultText(data) || `${counts}${failedText}`}.${data.error ? ` ${data.error}` : ""}`, { dismiss: true });
    setJobButtons(false);
    current = null;
    afterJob(job, data);
    return;
  }
  const progress = $("job-progress");
  show(progress, true);
  if (total) { progress.max = total; progress.value = done; } else progress.removeAttribute("value");
  showJob(`${label}${phase ? ` (${phase})` : ""}: ${counts}${failedText}${data.message ? ` – ${data.message}` : ""}`, { cancel: true, progress: true });
}

function resultText(data) {
  const r = data.result;
  if (!r) return "";
  const parts = [];
  if (r.described !== undefined) parts.push(`${formatNumber(r.described)} described`);
  if (r.failed) parts.push(`${formatNumber(r.failed)} failed`);
  if (r.embedded !== undefined) parts.push(`${formatNumber(r.embedded)} embedded`);
  if (r.remaining) parts.push(`${formatNumber(r.remaining)} still to describe`);
  return parts.join(", ");
}

/** A job that embedded writes a new index generation, which the server swaps in a moment
 * later: wait for it, then let the page show the status and the current search again. */
async function afterJob(job, data) {
  if (data.state === "done" && (data.kind || job.kind) !== "describe") {
    for (let i = 0; i < 40; i++) {
      let s;
      try { s = await api("api/status"); } catch { break; }
      if (s.index_loaded && s.generation !== job.generationBefore) break;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  await hooks.onFinished();
}

async function cancelJob() {
  const job = current;
  if (!job) return;
  if (!job.live || !job.id) { // only an estimate so far: nothing runs
    current = null;
    showJob("", {});
    setJobButtons(false);
    return;
  }
  $("job-cancel").disabled = true;
  $("job-text").textContent += " – stopping…";
  try {
    await api(`api/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
  } catch (err) {
    $("job-text").textContent = `Could not stop the job: ${err.message}`;
  } finally {
    $("job-cancel").disabled = false;
  }
  if (!job.source) pollJob(job);
}

function showJob(text, { confirm = false, cancel = false, dismiss = false, progress = false }) {
  show($("job"), Boolean(text));
  $("job-text").textContent = text;
  show($("job-confirm"), confirm);
  show($("job-cancel"), cancel);
  show($("job-dismiss"), dismiss);
  if (!progress) show($("job-progress"), false);
}

function setJobButtons(busy) {
  for (const button of $("job-buttons").querySelectorAll("button")) button.disabled = busy;
}

/** generation(): the index generation the page knows (a finished job waits for a newer one);
 * onFinished(): show the status and the search again once a job has ended. */
export function initJobs({ generation, onFinished }) {
  Object.assign(hooks, { generation, onFinished });
  for (const button of $("job-buttons").querySelectorAll("button[data-kind]")) {
    button.addEventListener("click", () => estimateJob(button.dataset.kind));
  }
  $("job-confirm").addEventListener("click", startJob);
  $("job-cancel").addEventListener("click", cancelJob);
  $("job-dismiss").addEventListener("click", () => showJob("", {}));
}
