// The URL is the search: query, filters and the open photo live in it, so back/forward and
// shared links restore them. This module reads and writes it (history entries); what the
// page does with a URL is the renderer main.js registers with onUrlChange().

export const SEARCH_KEYS = ["q", "like", "in", "after", "before", "min_score", "sort", "limit"];
export const FILTER_KEYS = ["in", "after", "before", "min_score", "sort"];

let renderer = () => {};

/** `render` shows what the URL says; it runs on every navigate() and on back/forward. */
export function onUrlChange(render) {
  renderer = render;
  window.addEventListener("popstate", render);
}

/** Show what the URL says now. */
export function render() { renderer(); }

export function readUrl() {
  const url = new URLSearchParams(location.search);
  const params = {};
  for (const key of [...SEARCH_KEYS, "photo"]) {
    const value = (url.get(key) || "").trim();
    if (value) params[key] = value;
  }
  return params;
}

export function urlFor(params) {
  const url = new URLSearchParams();
  for (const key of [...SEARCH_KEYS, "photo"]) if (params[key]) url.set(key, params[key]);
  const query = url.toString();
  return query ? `?${query}` : location.pathname;
}

/** The search a URL asks for, without the open photo. */
export function searchKey(params) {
  const { photo, ...rest } = params;
  return urlFor(rest);
}

/** Go to a new search (or photo): a new history entry, then show what the URL says. */
export function navigate(params, { replace = false } = {}) {
  const target = urlFor(params);
  if (target !== location.search && !(target === location.pathname && !location.search)) {
    history[replace ? "replaceState" : "pushState"]({ imgrag: true }, "", target);
  }
  render();
}

/** Open a photo over the current search: a history entry that closing it goes back over. */
export function openPhoto(id) {
  const params = { ...readUrl(), photo: id };
  history.pushState({ imgrag: true, opened: true }, "", urlFor(params));
  render();
}

/** Another photo in place of the open one (previous / next): no new history entry. */
export function replacePhoto(id) {
  history.replaceState(history.state, "", urlFor({ ...readUrl(), photo: id }));
}

/** Closing is going back when the photo was opened from this page; else drop it from the URL. */
export function leavePhoto() {
  if (history.state && history.state.opened) history.back();
  else navigate({ ...readUrl(), photo: undefined }, { replace: true });
}

export function clearFilters() {
  const params = readUrl();
  for (const key of FILTER_KEYS) delete params[key];
  navigate(params);
}
