// The results grid: runs the search the URL asks for, shows its photos as tiles (more as
// the end of the grid comes into view), says when there are none, and moves between tiles
// with the arrow keys. detail.js reads the results from here for previous / next.

import { api, ApiError, descriptionOf } from "./api.js";
import { $, clear, h, show } from "./dom.js";
import { formatDate, formatScore } from "./format.js";
import { introMessage, setMessage } from "./message.js";
import { currentStatus, loadStatus } from "./status.js";
import { clearFilters, FILTER_KEYS, navigate, openPhoto, readUrl, searchKey, SEARCH_KEYS, urlFor } from "./url-state.js";

const PAGE_SIZE = 48;
const AUTOLOAD_MARGIN = 400; // px below the window at which the next page starts loading

const ui = { grid: $("grid"), more: $("more") };
const state = {
  results: [],        // result objects shown in the grid, in order
  nextOffset: null,   // where the next page starts; null when there is none
  generation: 0,      // bumped by every new search, so a late answer for an old one is dropped
  loading: false,
  key: "",            // the search (URL without `photo`) the grid currently shows
};
let onTilesAdded = () => {};

/** Run the search in `params` unless the grid shows it already. */
export function showSearch(params) {
  const key = searchKey(params);
  if (key === state.key) return;
  state.key = key;
  runSearch(params);
}

/** The next showSearch() runs its search again, even the same one (e.g. after indexing). */
export function forgetSearch() { state.key = ""; }

export function resultIndex(id) { return state.results.findIndex((r) => String(r.id) === String(id)); }

export function resultAt(index) { return state.results[index]; }

export function resultCount() { return state.results.length; }

export function tileById(id) { return ui.grid.querySelector(`.tile[data-id="${CSS.escape(String(id))}"]`); }

export function tileByIndex(index) { return ui.grid.querySelector(`.tile[data-index="${index}"]`); }

export function tiles() { return [...ui.grid.querySelectorAll(".tile")]; }

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
    introMessage(currentStatus());
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
  onTilesAdded();
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
  else if (cutoff === null && !filtered) parts.push(" (none stands out as a match for this query).");
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

// ---- keyboard ---------------------------------------------------------------------------

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

/** onTilesAdded: called after every page of tiles (the detail view's previous / next follow). */
export function initGrid({ onTilesAdded: tilesAdded }) {
  onTilesAdded = tilesAdded;
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
  $("like-clear").addEventListener("click", () => {
    const params = readUrl();
    delete params.like;
    navigate(params);
  });
}
