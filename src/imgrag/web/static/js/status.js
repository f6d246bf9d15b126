// The Index panel's status: what is found, described, embedded and indexed, what to do
// next, the folders the filter offers; opened by itself when there is no index yet.

import { api } from "./api.js";
import { $, clear, h, pathText, show, togglePanel } from "./dom.js";
import { formatNumber } from "./format.js";
import { followRunning } from "./jobs.js";
import { hasMessage, introMessage, setMessage } from "./message.js";
import { readUrl } from "./url-state.js";

const ui = { status: $("status"), statusToggle: $("status-toggle"), statusDot: $("status-dot") };
let status = null; // the last answer of GET api/status

export function currentStatus() { return status; }

export async function loadStatus({ open = false } = {}) {
  let s;
  try {
    s = await api("api/status");
  } catch (err) {
    $("status-summary").textContent = err.message;
    return;
  }
  status = s;
  const fields = $("status-fields");
  clear(fields);
  const row = (label, value) => fields.append(h("div", {}, h("dt", { text: label }), h("dd", { text: value })));
  const missing = s.exists === false;
  const empty = !missing && !s.index_size;
  if (!missing) {
    row("Photos", `${formatNumber(s.photos)} found${s.files && s.files !== s.photos ? ` (${formatNumber(s.files)} files)` : ""}`);
    row("Described", formatNumber(s.described));
    fields.append(h("div", {}, h("dt", { text: "Failed" }), h("dd", {}, formatNumber(s.failed), failedList(s))));
    row("Embedded", formatNumber(s.embedded));
    row("Index", s.index_size ? `${formatNumber(s.index_size)} photos, ${s.index_up_to_date ? "up to date" : "out of date"}` : "not built yet");
  }
  if (s.roots && s.roots.length) row("Folders", s.roots.join(", "));
  if (s.libraries) row("Libraries", Object.entries(s.libraries).map(([name, n]) => `${name} (${formatNumber(n)})`).join(", ") || "none yet");
  const summary = missing ? "no index yet" : s.index_problem ? "needs attention" : s.index_up_to_date ? "up to date" : "out of date";
  $("status-summary").textContent = summary;
  const next = [];
  if (missing) next.push("Nothing is indexed here yet. “Index new photos” describes every photo with the vision model and builds the search index.");
  else if (empty) next.push("The search index is empty: index the photos to search them.");
  if (s.index_problem) next.push(s.index_problem);
  if (!missing && (s.next_describe || s.next_embed || s.next_rebuild_index)) {
    next.push(`Next run would describe ${formatNumber(s.next_describe || 0)} and embed ${formatNumber(s.next_embed || 0)}${s.next_rebuild_index ? ", and rebuild the index" : ""}.`);
  }
  $("status-next").textContent = next.join(" ");
  show(ui.statusDot, missing || empty || !s.index_up_to_date || Boolean(s.index_problem));
  const readOnly = Boolean(s.read_only);
  show($("job-buttons"), !readOnly);
  if (readOnly) $("status-next").textContent += (next.length ? " " : "") + (s.read_only_hint || "This server is read-only: run imgrag index on its machine.");
  const folders = $("folders");
  clear(folders);
  for (const root of s.roots || []) folders.append(h("option", { value: root }));
  if (open || missing || empty) togglePanel(ui.status, ui.statusToggle, true);
  if (!readUrl().q && !readUrl().like) {
    if (missing || empty) setMessage("");
    else if (!hasMessage()) introMessage(s);
  }
  // A job running already (started from another tab, or before a reload): follow it.
  followRunning(s.job);
}

/** Which photos failed (and which are quarantined), and why: a count alone leaves nothing to act on. */
function failedList(s) {
  const photos = [...(s.failed_photos || []),
    ...(s.quarantined_photos || []).map((p) => ({ ...p, reason: `quarantined: ${p.reason}` }))];
  if (!photos.length) return null;
  const shown = 10;
  return h("ul", { id: "status-failed" },
    photos.slice(0, shown).map((p) => h("li", {}, h("code", {}, pathText(p.path)), `: ${p.reason}`)),
    photos.length > shown ? h("li", { text: `… and ${formatNumber(photos.length - shown)} more (imgrag status --json lists them all)` }) : null);
}

export function initStatus() {
  ui.statusToggle.addEventListener("click", () => {
    togglePanel(ui.status, ui.statusToggle);
    if (!ui.status.hidden) loadStatus();
  });
}
