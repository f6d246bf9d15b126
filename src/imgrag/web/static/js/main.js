// imgrag's page: search, browse, ask and run index jobs against the JSON API of `imgrag serve`.
// Hand-written ES modules, no framework or build step. This one wires them together and
// shows what the URL says.

import { askFollowsUrl, initAsk } from "./ask.js";
import { gridChanged, initDetail, renderDetail } from "./detail.js";
import { $ } from "./dom.js";
import { forgetSearch, initGrid, showSearch } from "./grid.js";
import { initJobs } from "./jobs.js";
import { initLogin } from "./login.js";
import { fillForms, initSearchForm } from "./search-form.js";
import { currentStatus, initStatus, loadStatus } from "./status.js";
import { onUrlChange, readUrl, render } from "./url-state.js";

const TOUCH = window.matchMedia("(pointer: coarse)");

/** Show what the URL says: run the search if it changed, open or close the detail view. */
function showUrl() {
  const params = readUrl();
  fillForms(params);
  showSearch(params);
  askFollowsUrl(params);
  renderDetail(params);
}

/** A job has ended: the status again, and the search again (a new index may answer it). */
async function afterJob() {
  await loadStatus();
  const params = readUrl();
  if (params.q || params.like) { forgetSearch(); render(); }
}

initLogin();
initSearchForm();
initStatus();
initGrid({ onTilesAdded: gridChanged });
initDetail();
initJobs({ generation: () => currentStatus()?.generation ?? null, onFinished: afterJob });
initAsk();
onUrlChange(showUrl);
render();
loadStatus();
// Focus the search box, but on a touch screen not over results: the keyboard would hide them.
const params = readUrl();
if (!$("detail").open && !(TOUCH.matches && (params.q || params.like))) $("q").focus();
