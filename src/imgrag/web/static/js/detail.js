// The photo detail view: a dialog with the preview, everything the description and the file
// say, previous / next along the grid, "More like this"; the open photo is in the URL.

import { api, descriptionOf } from "./api.js";
import { $, clear, h, pathText } from "./dom.js";
import { formatBytes, formatDate, formatScore } from "./format.js";
import { resultAt, resultCount, resultIndex, tileById, tileByIndex } from "./grid.js";
import { FILTER_KEYS, leavePhoto, navigate, readUrl, replacePhoto } from "./url-state.js";

const DESCRIPTION_FIELDS = [
  ["description", "Description"], ["objects", "Objects"], ["people", "People"], ["setting", "Setting"],
  ["activities", "Activities"], ["text", "Visible text"], ["colors", "Colours"], ["tags", "Tags"],
  ["time_of_day", "Time of day"], ["search_phrases", "Search phrases"],
];

const dialog = $("detail");
let detailId = null; // the photo shown

/** Open the photo the URL names, or close the view when it names none. */
export function renderDetail(params) {
  if (params.photo) openDetail(params.photo);
  else if (dialog.open) dialog.close();
}

/** The grid has more tiles: previous / next may have somewhere to go now. */
export function gridChanged() {
  if (dialog.open) updateDetailSteps();
}

async function openDetail(id) {
  const index = resultIndex(id);
  const result = index >= 0 ? resultAt(index) : null;
  detailId = id;
  updateDetailSteps();
  const img = $("detail-img");
  img.src = result && result.preview_url ? result.preview_url : `api/photos/${encodeURIComponent(id)}/preview`;
  img.alt = result ? result.caption || "" : "";
  $("detail-caption").textContent = result ? result.caption || "" : "…";
  $("detail-why").textContent = result && result.why ? `Why it matched: ${result.why}` : "";
  $("detail-file").href = result && result.file_url ? result.file_url : `api/photos/${encodeURIComponent(id)}/file`;
  clear($("detail-fields"));
  if (!dialog.open) dialog.showModal();
  $("detail-close").focus();
  let record;
  try {
    record = await api(`api/photos/${encodeURIComponent(id)}`);
  } catch (err) {
    if (detailId === id) $("detail-fields").append(h("dd", { class: "error", text: err.message }));
    return;
  }
  if (detailId !== id) return;
  fillDetail(record, result);
}

/** Previous / next follow the grid; a shared link's photo may come before the grid does. */
function updateDetailSteps() {
  const index = resultIndex(detailId);
  $("detail-prev").disabled = index <= 0;
  $("detail-next").disabled = index < 0 || index >= resultCount() - 1;
}

function fillDetail(record, result) {
  const desc = descriptionOf(record);
  const caption = desc.caption || record.caption || (result && result.caption) || "";
  $("detail-caption").textContent = caption;
  $("detail-img").alt = caption;
  const fields = $("detail-fields");
  clear(fields);
  const row = (label, value, cls) => {
    if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
    fields.append(h("dt", { text: label }), h("dd", { class: cls || null }, value));
  };
  const list = (items) => h("ul", { class: "chips" }, items.map((item) => h("li", { text: String(item) })));
  const known = new Set(["caption"]);
  for (const [key, label] of DESCRIPTION_FIELDS) {
    known.add(key);
    const value = desc[key];
    if (key === "people" && value && typeof value === "object") {
      if (value.count || (value.activities || []).length) {
        const count = value.count ?? 0;
        const who = count === 1 ? "1 person" : `${count} people`;
        row(label, (value.activities || []).length ? `${who}: ${value.activities.join("; ")}` : who);
      }
    } else if (Array.isArray(value)) {
      row(label, value.length ? list(value) : null, key === "text" ? "verbatim" : null);
    } else row(label, value ? String(value) : null);
  }
  // Fields a newer prompt may add: shown too, as text.
  for (const [key, value] of Object.entries(desc)) {
    if (known.has(key) || value === null || value === "" || typeof value === "object" && !Array.isArray(value)) continue;
    row(key.replace(/_/g, " "), Array.isArray(value) ? list(value) : String(value));
  }
  if (result) row("Score", formatScore(result.score));
  // The camera's date when EXIF has one; else the file's time, and the label says so.
  const fileDate = record.date || (result && result.date);
  if (record.taken) row("Taken", formatDate(record.taken, true));
  else row("Date", fileDate ? `${formatDate(fileDate, true)} (file time; no date from the camera)` : "unknown");
  row("Camera", record.camera);
  const gps = record.gps;
  if (Array.isArray(gps) && gps.length >= 2) {
    row("GPS", `${Number(gps[0]).toFixed(5)}, ${Number(gps[1]).toFixed(5)}${gps.length > 2 && gps[2] !== null ? `, ${Math.round(gps[2])} m` : ""}`);
  } else if (gps && typeof gps === "object" && "lat" in gps) {
    row("GPS", `${Number(gps.lat).toFixed(5)}, ${Number(gps.lon ?? gps.lng).toFixed(5)}`);
  }
  if (record.width && record.height) row("Size", `${record.width} × ${record.height}${record.size ? `, ${formatBytes(record.size)}` : ""}`);
  const paths = record.abs_paths || record.paths || (result && result.path ? [result.path] : []);
  if (paths.length) row(paths.length > 1 ? `Path (${paths.length} copies)` : "Path", h("span", {}, ...paths.map((p) => h("code", { class: "path" }, pathText(p)))));
  if (record.model) row("Described by", `${record.model}${record.created ? `, ${formatDate(record.created)}` : ""}`);
}

function stepDetail(delta) {
  const index = resultIndex(detailId);
  const next = resultAt(index + delta);
  if (!next) return;
  replacePhoto(next.id);
  openDetail(next.id);
  const tile = tileByIndex(index + delta);
  if (tile) tile.scrollIntoView({ block: "nearest" });
}

function onDetailKey(event) {
  if (event.target.closest("input, textarea, select")) return;
  if (event.key === "ArrowLeft") { event.preventDefault(); stepDetail(-1); }
  else if (event.key === "ArrowRight") { event.preventDefault(); stepDetail(1); }
}

function moreLikeThis() {
  const id = detailId;
  const params = readUrl();
  const next = { like: id };
  for (const key of FILTER_KEYS) if (params[key] && key !== "min_score") next[key] = params[key];
  if (dialog.open) dialog.close();
  navigate(next);
}

export function initDetail() {
  dialog.addEventListener("keydown", onDetailKey);
  dialog.addEventListener("cancel", (event) => { event.preventDefault(); leavePhoto(); });
  dialog.addEventListener("click", (event) => { if (event.target === dialog) leavePhoto(); });
  dialog.addEventListener("close", () => {
    const tile = tileById(detailId);
    detailId = null;
    if (tile) tile.focus();
  });
  $("detail-close").addEventListener("click", leavePhoto);
  $("detail-like").addEventListener("click", moreLikeThis);
  $("detail-prev").addEventListener("click", () => stepDetail(-1));
  $("detail-next").addEventListener("click", () => stepDetail(1));
}
