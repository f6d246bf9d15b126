// The Ask box: POST api/ask with the page's filters, the answer streamed in as server-sent
// events, then its citations as links that open the photo in the detail view. The answer is
// model output: like every description it only ever goes into text nodes, never into HTML.

import { postEvents } from "./api.js";
import { $, clear, h, pathText, show } from "./dom.js";
import { openPhoto, readUrl, searchKey } from "./url-state.js";

const ui = {
  form: $("ask-form"), input: $("ask-q"), box: $("answer"), scope: $("ask-scope"),
  text: $("answer-text"), cited: $("answer-cited"), meta: $("answer-meta"),
};
const ASK_FILTERS = [["in", "in"], ["after", "taken from"], ["before", "taken before"], ["min_score", "minimum score"]];
let answeredFor = null; // the search (URL without the open photo) the answer shown was asked under

/** The search's filters apply to the Ask box too: say which, under it (nothing when none). */
function showScope(params) {
  const used = ASK_FILTERS.filter(([key]) => params[key]).map(([key, label]) => `${label} ${params[key]}`);
  ui.scope.textContent = used.length ? `Asks only about photos that pass the search's filters: ${used.join(", ")}.` : "";
  show(ui.scope, used.length > 0);
}

/** The URL changed: the filters line follows it, and an answer goes once another search is shown. */
export function askFollowsUrl(params) {
  showScope(params);
  if (answeredFor !== null && searchKey(params) !== answeredFor) {
    answeredFor = null;
    show(ui.box, false);
    ui.text.textContent = "";
    clear(ui.cited);
    ui.meta.textContent = "";
  }
}

async function askQuestion(event) {
  event.preventDefault();
  const question = ui.input.value.trim();
  if (!question) return;
  const body = { question };
  const params = readUrl();
  for (const key of ["in", "after", "before"]) if (params[key]) body[key] = params[key];
  if (params.min_score) body.min_score = Number(params.min_score);
  answeredFor = searchKey(params);
  show(ui.box, true);
  ui.text.textContent = "";
  clear(ui.cited);
  ui.meta.textContent = "Asking…";
  for await (const [kind, payload] of postEvents("api/ask", body)) {
    if (kind === "chunk") ui.text.append(payload.text);
    else if (kind === "result") showAnswer(payload);
    else if (kind === "error") ui.meta.textContent = payload.error;
  }
}

/** A citation opens its photo in the page's detail view. */
function openCited(event, id) {
  event.preventDefault();
  openPhoto(id);
}

/** The answer again, each [n] a link to the photo it cites; the cited photos below it. */
function showAnswer(doc) {
  if (doc.answer === null) {
    ui.text.textContent = "";
    ui.meta.textContent = "No photo matches the question well enough; nothing was sent to the model.";
    return;
  }
  const byN = new Map(doc.citations.map((c) => [c.n, c]));
  const parts = doc.answer.split(/(\[\d{1,3}\])/);
  ui.text.replaceChildren(...parts.map((part) => {
    const cited = byN.get(Number((part.match(/^\[(\d+)\]$/) || [])[1]));
    return cited ? h("a", { href: `?photo=${cited.id}`, class: "citation", onclick: (e) => openCited(e, cited.id) }, part)
                 : document.createTextNode(part);
  }));
  ui.cited.replaceChildren(...doc.citations.map((c) => h("li", {},
    h("a", { href: `?photo=${c.id}`, onclick: (e) => openCited(e, c.id) },
      h("img", { src: c.thumbnail_url, alt: "", width: 64, height: 64, loading: "lazy" }),
      h("span", {}, `[${c.n}] `, pathText(c.path))))));
  const u = doc.usage;
  const photos = doc.photos.length === 1 ? "1 photo" : `${doc.photos.length} photos`;
  ui.meta.textContent = `${photos} read by ${doc.model}; ${u.prompt_tokens + u.completion_tokens} tokens`;
}

export function initAsk() {
  ui.form.addEventListener("submit", (event) => {
    askQuestion(event).catch((err) => { ui.meta.textContent = err.message; });
  });
}
