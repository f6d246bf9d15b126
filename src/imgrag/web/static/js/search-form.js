// The search box and the Filters panel: filled from the URL, submitted into it; "/" focuses
// the search box from anywhere, and ArrowDown goes from it into the grid.

import { $, show, togglePanel } from "./dom.js";
import { forgetSearch, tiles } from "./grid.js";
import { clearFilters, FILTER_KEYS, navigate, readUrl } from "./url-state.js";

const PHONE = window.matchMedia("(max-width: 700px)");
const ui = {
  q: $("q"), form: $("search-form"),
  filters: $("filters"), filtersToggle: $("filters-toggle"), filterCount: $("filter-count"),
};
let filtersTouched = false; // the user opened or closed the panel: the page leaves it as they did

export function fillForms(params) {
  ui.q.value = params.q || "";
  for (const key of FILTER_KEYS) {
    const field = ui.filters.elements[key];
    field.value = params[key] || (key === "sort" ? "relevance" : "");
  }
  const active = FILTER_KEYS.filter((k) => params[k] && !(k === "sort" && params[k] === "relevance")).length;
  ui.filterCount.textContent = active ? String(active) : "";
  show(ui.filterCount, active > 0);
  // A shared link's filters are shown; on a phone the badge says it, and the results stay in view.
  if (active && ui.filters.hidden && !filtersTouched && !PHONE.matches) togglePanel(ui.filters, ui.filtersToggle, true);
}

function onGlobalKey(event) {
  const typing = event.target.closest("input, textarea, select, [contenteditable]");
  if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !$("detail").open && !$("login").open) {
    event.preventDefault();
    ui.q.focus();
    ui.q.select();
  } else if (event.key === "ArrowDown" && event.target === ui.q && tiles().length) {
    event.preventDefault();
    tiles()[0].focus();
  }
}

export function initSearchForm() {
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = ui.q.value.trim();
    const params = readUrl();
    // Minimum score 0 is what "Show the nearest anyway" sets for the query it was shown for:
    // a new query gets the default set again (a minimum score above 0 set in Filters stays).
    if (q !== params.q && Number(params.min_score) === 0) delete params.min_score;
    delete params.photo;
    delete params.like;
    if (q) params.q = q; else delete params.q;
    forgetSearch(); // the same query again searches again (e.g. after indexing)
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
  ui.filtersToggle.addEventListener("click", () => { filtersTouched = true; togglePanel(ui.filters, ui.filtersToggle); });
  document.addEventListener("keydown", onGlobalKey);
}
