// imgrag's page: search, browse, and run index jobs against the JSON API of `imgrag serve`.
// Hand-written, no framework or build step. Every text that comes from a description is
// untrusted: it only ever goes into textContent / attributes, never into HTML.
"use strict";

const PAGE_SIZE = 48;
const AUTOLOAD_MARGIN = 400; // px below the window at which the next page starts loading
// The URL holds the whole search, so back/forward and shared links restore it.
const SEARCH_KEYS = ["q", "like", "in", "after", "before", "min_score", "sort", "limit"];
const FILTER_KEYS = ["in", "after", "before", "min_score", "sort"];
const JOB_LABELS = { describe: "Describe", embed: "Embed", index: "Index" };
const FINISHED = new Set(["done", "failed", "cancelled"]); // a job's final states (GET /api/jobs/{id})

const $ = (id) => document.getElementById(id);
const PHONE = window.matchMedia("(max-width: 700px)");
const TOUCH = window.matchMedia("(pointer: coarse)");
const ui = {
  q: $("q"), form: $("search-form"), grid: $("grid"), more: $("more"), message: $("message"),
  filters: $("filters"), filtersToggle: $("filters-toggle"), filterCount: $("filter-count"),
  status: $("status"), statusToggle: $("status-toggle"), statusDot: $("status-dot"),
  detail: $("detail"), login: $("login"),
};

const state = {
  results: [],        // result objects shown in the grid, in order
  nextOffset: null,   // where the next page starts; null when there is none
  generation: 0,      // bumped by every new search, so a late answer for an old one is dropped
  loading: false,
  key: "",            // the search (URL without `photo`) the grid currently shows
  detailId: null,
  status: null,
  job: null,          // {id, kind, source}
};

// ---- small DOM helpers ------------------------------------------------------------------

/** Make an element; strings among the children become text nodes (never HTML). */
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function clear(node) { node.replaceChildren(); }

function show(node, visible) { node.hidden = !visible; }

// ---- the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, data) { super(message); this.status = status; this.data = data; }
}

let loginWaiters = null;

/** fetch + JSON; a 401 asks for the token once (the server keeps it in a cookie) and retries. */
async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
    delete init.json;
  }
  const response = await fetch(path, init);
  const data = await readJson(response);
  if (response.status === 401 && !options.noLogin) {
    await askForToken();
    return api(path, options);
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `the server answered ${response.status}`, data);
  }
  return data;
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return null; }
}

function askForToken() {
  if (!loginWaiters) {
    loginWaiters = [];
    $("login-error").textContent = "";
    if (!ui.login.open) ui.login.showModal();
    $("login-token").focus();
  }
  return new Promise((resolve) => loginWaiters.push(resolve));
}

async function submitToken(event) {
  event.preventDefault();
  const input = $("login-token");
  try {
    await api("api/login", { json: { token: input.value }, noLogin: true });
  } catch (err) {
    $("login-error").textContent = err.status === 401 || err.status === 403 ? "That token is not right." : err.message;
    input.select();
    return;
  }
  input.value = "";
  ui.login.close();
  const waiting = loginWaiters || [];
  loginWaiters = null;
  waiting.forEach((resolve) => resolve());
}

// ---- the URL is the search --------------------------------------------------------------

function readUrl() {
  const url = new URLSearchParams(location.search);
  const params = {};
  for (const key of [...SEARCH_KEYS, "photo"]) {
    const value = (url.get(key) || "").trim();
    if (value) params[key] = value;
  }
  return params;
}

function urlFor(params) {
  const url = new URLSearchParams();
  for (const key of [...SEARCH_KEYS, "photo"]) if (params[key]) url.set(key, params[key]);
  const query = url.toString();
  return query ? `?${query}` : location.pathname;
}

function searchKey(params) {
  const { photo, ...rest } = params;
  return urlFor(rest);
}

/** Go to a new search (or photo): a new history entry, then show what the URL says. */
function navigate(params, { replace = false } = {}) {
  const target = urlFor(params);
  if (target !== location.search && !(target === location.pathname && !location.search)) {
    history[replace ? "replaceState" : "pushState"]({ imgrag: true }, "", target);
  }
  render();
}

/** Show what the URL says: run the search if it changed, open or close the detail view. */
function render() {
  const params = readUrl();
  fillForms(params);
  const key = searchKey(params);
  if (key !== state.key) {
    state.key = key;
    runSearch(params);
  }
  if (params.photo) openDetail(params.photo);
  else if (ui.detail.open) ui.detail.close();
}

function fillForms(params) {
  ui.q.value = params.q || "";
  for (const key of FILTER_KEYS) {
    const field = ui.filters.elements[key];
    field.value = params[key] || (key === "sort" ? "relevance" : "");
  }
  const active = FILTER_KEYS.filter((k) => params[k] && !(k === "sort" && params[k] === "relevance")).length;
  ui.filterCount.textContent = active ? String(active) : "";
  show(ui.filterCount, active > 0);
  // A shared link's filters are shown; on a phone the badge says it, and the results stay in view.
  if (active && ui.filters.hidden && !state.filtersTouched && !PHONE.matches) togglePanel(ui.filters, ui.filtersToggle, true);
}

// ---- searching --------------------------------------------------------------------------

async function runSearch(params) {
  const generation = ++state.generation;
  state.results = [];
  state.nextOffset = null;
  clear(ui.grid);
  ui.grid.setAttribute("aria-label", "Results");
  show(ui.more, false);
  setMessage("");
  showLikeBanner(params);
  if (!params.q && !params.like) {
    document.title = "imgrag";
    introMessage();
    return;
  }
  document.title = params.q ? `${params.q} – imgrag` : "Similar photos – imgrag";
  await loadPage(params, 0, generation);
}

async function loadPage(params, offset, generation) {
  if (state.loading && offset > 0) return;
  state.loading = true;
  ui.grid.setAttribute("aria-busy", "true");
  if (offset === 0) setMessage("Searching…");
  try {
    const query = new URLSearchParams();
    for (const key of SEARCH_KEYS) if (params[key] && key !== "limit") query.set(key, params[key]);
    query.set("limit", params.limit || PAGE_SIZE);
    query.set("offset", offset);
    const data = await api(`api/search?${query}`);
    if (generation !== state.generation) return;
    if (offset === 0) setMessage("");
    addTiles(data.results || []);
    state.nextOffset = data.next_offset ?? null;
    show(ui.more, state.nextOffset !== null);
    // The observer only speaks when the end of the grid comes into view; if it still is, go on.
    if (state.nextOffset !== null) requestAnimationFrame(() => { if (nearBottom()) loadMore(); });
    if (offset === 0 && data.index === "none") noIndex(data);
    else if (offset === 0 && !state.results.length) noResults(params, data);
    if (state.results.length) countMessage(params);
  } catch (err) {
    if (generation !== state.generation) return;
    searchFailed(err);
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      ui.grid.removeAttribute("aria-busy");
    }
  }
}

function countMessage(params) {
  const n = state.results.length;
  const more = state.nextOffset !== null;
  const what = params.q ? `for “${params.q}”` : "like this one";
  const sorted = params.sort === "date" ? ", newest first" : "";
  const text = `${n}${more ? "+" : ""} ${n === 1 && !more ? "photo" : "photos"} ${what}${sorted}`;
  setMessage(h("span", { class: "muted", id: "count", text }));
  ui.grid.setAttribute("aria-label", text);
}

function nearBottom() {
  return !ui.more.hidden && ui.more.getBoundingClientRect().top < window.innerHeight + AUTOLOAD_MARGIN;
}

function loadMore() {
  if (state.nextOffset === null || state.loading) return;
  loadPage(readUrl(), state.nextOffset, state.generation);
}

function addTiles(results) {
  const params = readUrl();
  const fragment = document.createDocumentFragment();
  for (const result of results) {
    const index = state.results.length;
    state.results.push(result);
    const caption = result.caption || "(no caption)";
    const img = h("img", {
      src: sized(result.thumbnail_url, 256), alt: caption, loading: "lazy", decoding: "async", width: 256, height: 256,
      // Sharp on phones and HiDPI screens too: each size is made once and cached by the server.
      srcset: `${sized(result.thumbnail_url, 256)} 256w, ${sized(result.thumbnail_url, 512)} 512w`,
      sizes: "(max-width: 700px) 50vw, 220px",
    });
    img.addEventListener("error", () => img.classList.add("broken"), { once: true });
    fragment.append(h("li", {},
      h("a", {
        class: "tile", href: urlFor({ ...params, photo: result.id }), "data-id": result.id, "data-index": index,
        title: result.abs_path || result.path || caption,
      },
      h("span", { class: "thumb" }, img),
      h("span", { class: "caption", text: caption, "aria-hidden": "true" }), // the image's alt says it already
      h("span", { class: "meta" },
        h("span", { class: "score", title: "score", text: formatScore(result.score) }),
        h("time", { datetime: result.date || null, text: formatDate(result.date) || "no date" })))));
  }
  ui.grid.append(fragment);
  if (ui.detail.open) updateDetailSteps();
}

function sized(url, size) {
  const u = new URL(url, location.href);
  u.searchParams.set("size", size);
  return u.pathname + u.search;
}

function noResults(params, data) {
  const filtered = FILTER_KEYS.some((k) => k !== "sort" && k !== "min_score" && params[k]);
  const cutoff = data.min_score ?? (params.min_score ? Number(params.min_score) : null);
  const parts = [h("strong", { text: params.q ? `No photos match “${params.q}”` : "No similar photos" })];
  if (filtered) parts.push(" with these filters");
  if (cutoff !== null && Number(cutoff) > 0) parts.push(` (none scored ${formatScore(cutoff)} or more).`);
  else parts.push(".");
  const actions = h("span", { class: "actions" });
  if (!params.min_score || Number(params.min_score) > 0) {
    actions.append(h("button", { type: "button", id: "show-nearest", class: "primary", onclick: () => navigate({ ...readUrl(), min_score: "0" }), text: "Show the nearest anyway" }));
  }
  if (filtered) actions.append(h("button", { type: "button", onclick: clearFilters, text: "Clear filters" }));
  setMessage(h("span", {}, ...parts), actions);
}

function noIndex(data) {
  setMessage(h("span", { text: data.hint || "Nothing is indexed yet." }));
  loadStatus({ open: true });
}

function searchFailed(err) {
  const text = err instanceof ApiError ? err.message : `Could not reach imgrag serve (${err.message}).`;
  setMessage(h("span", { class: "error", text }));
  // No index yet, or it is being built: the status panel says what to do next.
  if (err.status === 404 || err.status === 409 || err.status === 503) loadStatus({ open: true });
}

function introMessage() {
  const s = state.status;
  if (s && (!s.exists || !s.index_size)) return; // the status panel already says what to do
  setMessage(h("span", { class: "muted", text: "Type what is in the photo you are looking for: “receipt”, “kids at the beach”, “red car in the snow”." }));
}

function setMessage(...nodes) {
  clear(ui.message);
  for (const node of nodes) if (node) ui.message.append(node);
}

function showLikeBanner(params) {
  const banner = $("like-banner");
  show(banner, Boolean(params.like));
  if (!params.like) return;
  $("like-thumb").src = `api/photos/${encodeURIComponent(params.like)}/thumbnail?size=96`;
  $("like-caption").textContent = "…";
  api(`api/photos/${encodeURIComponent(params.like)}`).then((record) => {
    if (readUrl().like === params.like) $("like-caption").textContent = descriptionOf(record).caption || params.like;
  }).catch(() => { $("like-caption").textContent = params.like; });
}

function clearFilters() {
  const params = readUrl();
  for (const key of FILTER_KEYS) delete params[key];
  navigate(params);
}

// ---- formatting -------------------------------------------------------------------------

function formatScore(score) {
  return typeof score === "number" ? score.toFixed(2) : String(score ?? "");
}

/** The date as the camera recorded it (local time where the photo was taken): no time-zone shift. */
function formatDate(text, withTime = false) {
  if (!text) return "";
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2}))?/.exec(String(text));
  if (!m) return String(text);
  const date = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +(m[4] || 0), +(m[5] || 0)));
  const options = { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" };
  if (withTime && m[4]) Object.assign(options, { hour: "2-digit", minute: "2-digit" });
  return new Intl.DateTimeFormat(undefined, options).format(date);
}

function formatNumber(n) { return typeof n === "number" ? n.toLocaleString() : String(n ?? ""); }

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function formatBytes(n) {
  if (typeof n !== "number") return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// ---- keyboard ---------------------------------------------------------------------------

function tiles() { return [...ui.grid.querySelectorAll(".tile")]; }

/** How many tiles sit in one row of the grid right now (it reflows with the width). */
function columns(all) {
  if (all.length < 2) return 1;
  // The tiles' <li> rows: a focused tile is scaled up, which moves its own box.
  const top = all[0].parentElement.offsetTop;
  const inRow = all.findIndex((t) => t.parentElement.offsetTop > top);
  return inRow === -1 ? all.length : inRow;
}

function onGridKey(event) {
  const tile = event.target.closest(".tile");
  if (!tile || event.altKey || event.ctrlKey || event.metaKey) return;
  const all = tiles();
  const at = all.indexOf(tile);
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(all), ArrowDown: columns(all), Home: -at, End: all.length - 1 - at }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  let to = at + step;
  if (to >= all.length) {
    if (state.nextOffset !== null) loadMore();
    to = event.key === "ArrowDown" ? at : all.length - 1;
  }
  to = Math.max(0, Math.min(all.length - 1, to));
  all[to].focus();
  all[to].scrollIntoView({ block: "nearest" });
}

function onGlobalKey(event) {
  const typing = event.target.closest("input, textarea, select, [contenteditable]");
  if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !ui.detail.open && !ui.login.open) {
    event.preventDefault();
    ui.q.focus();
    ui.q.select();
  } else if (event.key === "ArrowDown" && event.target === ui.q && tiles().length) {
    event.preventDefault();
    tiles()[0].focus();
  }
}

// ---- the detail view --------------------------------------------------------------------

const DESCRIPTION_FIELDS = [
  ["description", "Description"], ["objects", "Objects"], ["people", "People"], ["setting", "Setting"],
  ["activities", "Activities"], ["text", "Visible text"], ["colors", "Colours"], ["tags", "Tags"],
  ["time_of_day", "Time of day"], ["search_phrases", "Search phrases"],
];

/** The structured description inside a record (the API may nest it or not). */
function descriptionOf(record) {
  if (record && typeof record.description === "object" && record.description !== null) return record.description;
  return record || {};
}

async function openDetail(id) {
  const index = state.results.findIndex((r) => String(r.id) === String(id));
  const result = index >= 0 ? state.results[index] : null;
  state.detailId = id;
  updateDetailSteps();
  const img = $("detail-img");
  img.src = result && result.preview_url ? result.preview_url : `api/photos/${encodeURIComponent(id)}/preview`;
  img.alt = result ? result.caption || "" : "";
  $("detail-caption").textContent = result ? result.caption || "" : "…";
  $("detail-why").textContent = result && result.why ? `Why it matched: ${result.why}` : "";
  $("detail-file").href = result && result.file_url ? result.file_url : `api/photos/${encodeURIComponent(id)}/file`;
  clear($("detail-fields"));
  if (!ui.detail.open) ui.detail.showModal();
  $("detail-close").focus();
  let record;
  try {
    record = await api(`api/photos/${encodeURIComponent(id)}`);
  } catch (err) {
    if (state.detailId === id) $("detail-fields").append(h("dd", { class: "error", text: err.message }));
    return;
  }
  if (state.detailId !== id) return;
  fillDetail(record, result);
}

/** Previous / next follow the grid; a shared link's photo may come before the grid does. */
function updateDetailSteps() {
  const index = state.results.findIndex((r) => String(r.id) === String(state.detailId));
  $("detail-prev").disabled = index <= 0;
  $("detail-next").disabled = index < 0 || index >= state.results.length - 1;
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
  if (paths.length) row(paths.length > 1 ? `Path (${paths.length} copies)` : "Path", h("span", {}, ...paths.map((p) => h("code", { class: "path", text: p }))));
  if (record.model) row("Described by", `${record.model}${record.created ? `, ${formatDate(record.created)}` : ""}`);
}

function closeDetail() {
  // Closing is going back when the photo was opened from this page; else drop it from the URL.
  if (history.state && history.state.opened) history.back();
  else navigate({ ...readUrl(), photo: undefined }, { replace: true });
}

function openPhoto(id) {
  const params = { ...readUrl(), photo: id };
  history.pushState({ imgrag: true, opened: true }, "", urlFor(params));
  render();
}

function stepDetail(delta) {
  const index = state.results.findIndex((r) => String(r.id) === String(state.detailId));
  const next = state.results[index + delta];
  if (!next) return;
  history.replaceState(history.state, "", urlFor({ ...readUrl(), photo: next.id }));
  openDetail(next.id);
  const tile = ui.grid.querySelector(`.tile[data-index="${index + delta}"]`);
  if (tile) tile.scrollIntoView({ block: "nearest" });
}

function onDetailKey(event) {
  if (event.target.closest("input, textarea, select")) return;
  if (event.key === "ArrowLeft") { event.preventDefault(); stepDetail(-1); }
  else if (event.key === "ArrowRight") { event.preventDefault(); stepDetail(1); }
}

function moreLikeThis() {
  const id = state.detailId;
  const params = readUrl();
  const next = { like: id };
  for (const key of FILTER_KEYS) if (params[key] && key !== "min_score") next[key] = params[key];
  if (ui.detail.open) ui.detail.close();
  navigate(next);
}

// ---- status and jobs --------------------------------------------------------------------

async function loadStatus({ open = false } = {}) {
  let s;
  try {
    s = await api("api/status");
  } catch (err) {
    $("status-summary").textContent = err.message;
    return;
  }
  state.status = s;
  const fields = $("status-fields");
  clear(fields);
  const row = (label, value) => fields.append(h("div", {}, h("dt", { text: label }), h("dd", { text: value })));
  const missing = s.exists === false;
  const empty = !missing && !s.index_size;
  if (!missing) {
    row("Photos", `${formatNumber(s.photos)} found${s.files && s.files !== s.photos ? ` (${formatNumber(s.files)} files)` : ""}`);
    row("Described", formatNumber(s.described));
    row("Failed", formatNumber(s.failed));
    row("Embedded", formatNumber(s.embedded));
    row("Index", s.index_size ? `${formatNumber(s.index_size)} photos, ${s.index_up_to_date ? "up to date" : "out of date"}` : "not built yet");
  }
  if (s.roots && s.roots.length) row("Folders", s.roots.join(", "));
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
  if (readOnly) $("status-next").textContent += (next.length ? " " : "") + "This server is read-only: run imgrag index on its machine.";
  const folders = $("folders");
  clear(folders);
  for (const root of s.roots || []) folders.append(h("option", { value: root }));
  if (open || missing || empty) togglePanel(ui.status, ui.statusToggle, true);
  if (!readUrl().q && !readUrl().like) {
    if (missing || empty) setMessage("");
    else if (!ui.message.childNodes.length) introMessage();
  }
  // A job running already (started from another tab, or before a reload): follow it. Not a dry
  // run (its estimate is this page's own question), and not over an estimate shown here.
  const running = s.job;
  if (running && running.id && !running.dry_run && !FINISHED.has(running.state) && !(state.job && state.job.id === running.id)
      && !(state.job && !state.job.live)) followJob(running.id, running.kind);
}

function togglePanel(panel, button, open) {
  const visible = open === undefined ? panel.hidden : open;
  panel.hidden = !visible;
  button.setAttribute("aria-expanded", String(visible));
}

function jobLimit() {
  const value = parseInt($("job-limit").value, 10);
  return value > 0 ? value : undefined;
}

/** First the dry run: what it would do and cost; nothing starts until Start is pressed. */
async function estimateJob(kind) {
  if (state.job && state.job.live) return;
  state.job = { kind, limit: jobLimit(), live: false };
  setJobButtons(true);
  showJob(`${JOB_LABELS[kind]}: estimating…`, { cancel: true });
  let estimate;
  try {
    const created = await api("api/jobs", { json: { kind, dry_run: true, limit: state.job.limit } });
    estimate = await finalJob(created);
  } catch (err) {
    showJob(`${JOB_LABELS[kind]}: ${err.message}`, { dismiss: true });
    setJobButtons(false);
    state.job = null;
    return;
  }
  if (!state.job || state.job.live) return;
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
    parts.push(photos ? `Would describe ${formatNumber(photos)} photos` : "No photo needs describing");
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
    if (waiting) parts.push(`${parts.length ? " " : ""}Would embed ${formatNumber(waiting)} descriptions waiting (on this machine: no vision request).`);
    else if (kind === "embed") parts.push(e.update_index ? "Would update the index (photos moved or deleted)." : "Nothing to embed: the index is up to date.");
  }
  return parts.join("");
}

async function startJob() {
  const pending = state.job;
  if (!pending || pending.live) return;
  pending.live = true;
  showJob(`${JOB_LABELS[pending.kind]}: starting…`, { cancel: true, progress: true });
  try {
    const created = await api("api/jobs", { json: { kind: pending.kind, limit: pending.limit } });
    followJob(created.id, pending.kind);
  } catch (err) {
    showJob(`${JOB_LABELS[pending.kind]}: ${err.message}`, { dismiss: true });
    state.job = null;
    setJobButtons(false);
  }
}

/** Live progress over SSE, falling back to polling if the stream breaks. */
function followJob(id, kind) {
  if (state.job && state.job.source) state.job.source.close();
  const generationBefore = state.status ? state.status.generation ?? null : null;
  state.job = { id, kind: kind || "index", live: true, source: null, generationBefore };
  setJobButtons(true);
  togglePanel(ui.status, ui.statusToggle, true);
  showJob(`${JOB_LABELS[state.job.kind] || "Job"}: starting…`, { cancel: true, progress: true });
  const job = state.job;
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
  while (!job.finished && state.job === job) {
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
  if (job.finished || state.job !== job) return;
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
    state.job = null;
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
 * later: wait for it, then show the status and the current search again. */
async function afterJob(job, data) {
  if (data.state === "done" && (data.kind || job.kind) !== "describe") {
    for (let i = 0; i < 40; i++) {
      let s;
      try { s = await api("api/status"); } catch { break; }
      if (s.index_loaded && s.generation !== job.generationBefore) break;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  await loadStatus();
  const params = readUrl();
  if (params.q || params.like) { state.key = ""; render(); }
}

async function cancelJob() {
  const job = state.job;
  if (!job) return;
  if (!job.live || !job.id) { // only an estimate so far: nothing runs
    state.job = null;
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

// ---- wiring -----------------------------------------------------------------------------

function init() {
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = ui.q.value.trim();
    const params = readUrl();
    delete params.photo;
    delete params.like;
    if (q) params.q = q; else delete params.q;
    state.key = ""; // the same query again searches again (e.g. after indexing)
    navigate(params);
  });
  ui.filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = readUrl();
    delete params.photo;
    for (const key of FILTER_KEYS) {
      const value = String(ui.filters.elements[key].value || "").trim();
      if (value && !(key === "sort" && value === "relevance")) params[key] = value; else delete params[key];
    }
    navigate(params);
  });
  ui.filters.addEventListener("change", (event) => {
    if (event.target.matches("select") && ui.filters.checkValidity()) ui.filters.requestSubmit();
  });
  $("filters-clear").addEventListener("click", clearFilters);
  ui.filtersToggle.addEventListener("click", () => { state.filtersTouched = true; togglePanel(ui.filters, ui.filtersToggle); });
  ui.statusToggle.addEventListener("click", () => {
    togglePanel(ui.status, ui.statusToggle);
    if (!ui.status.hidden) loadStatus();
  });
  ui.more.addEventListener("click", loadMore);
  if (window.IntersectionObserver) {
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) loadMore();
    }, { rootMargin: `${AUTOLOAD_MARGIN}px` }).observe(ui.more);
  }
  ui.grid.addEventListener("click", (event) => {
    const tile = event.target.closest(".tile");
    if (!tile || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    openPhoto(tile.dataset.id);
  });
  ui.grid.addEventListener("keydown", onGridKey);
  document.addEventListener("keydown", onGlobalKey);
  ui.detail.addEventListener("keydown", onDetailKey);
  ui.detail.addEventListener("cancel", (event) => { event.preventDefault(); closeDetail(); });
  ui.detail.addEventListener("click", (event) => { if (event.target === ui.detail) closeDetail(); });
  ui.detail.addEventListener("close", () => {
    const tile = ui.grid.querySelector(`.tile[data-id="${CSS.escape(String(state.detailId))}"]`);
    state.detailId = null;
    if (tile) tile.focus();
  });
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-like").addEventListener("click", moreLikeThis);
  $("detail-prev").addEventListener("click", () => stepDetail(-1));
  $("detail-next").addEventListener("click", () => stepDetail(1));
  $("like-clear").addEventListener("click", () => {
    const params = readUrl();
    delete params.like;
    navigate(params);
  });
  ui.login.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without it
  $("login-form").addEventListener("submit", submitToken);
  for (const button of $("job-buttons").querySelectorAll("button[data-kind]")) {
    button.addEventListener("click", () => estimateJob(button.dataset.kind));
  }
  $("job-confirm").addEventListener("click", startJob);
  $("job-cancel").addEventListener("click", cancelJob);
  $("job-dismiss").addEventListener("click", () => showJob("", {}));
  window.addEventListener("popstate", render);
  render();
  loadStatus();
  // Focus the search box, but on a touch screen not over results: the keyboard would hide them.
  const params = readUrl();
  if (!ui.detail.open && !(TOUCH.matches && (params.q || params.like))) ui.q.focus();
}

init();
