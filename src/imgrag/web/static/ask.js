// The Ask box: POST api/ask with the page's filters, the answer streamed in as server-sent
// events, then its citations as links that open the photo. Loaded after app.js, whose
// helpers (h, clear, show, readUrl, openPhoto, askForToken) it uses. The answer is model
// output: like every description it only ever goes into text nodes, never into HTML.
"use strict";

const askUi = {
  form: document.getElementById("ask-form"), input: document.getElementById("ask-q"),
  box: document.getElementById("answer"), text: document.getElementById("answer-text"),
  cited: document.getElementById("answer-cited"), meta: document.getElementById("answer-meta"),
};

async function askQuestion(event) {
  event.preventDefault();
  const question = askUi.input.value.trim();
  if (!question) return;
  const body = { question };
  const params = readUrl();
  for (const key of ["in", "after", "before"]) if (params[key]) body[key] = params[key];
  if (params.min_score) body.min_score = Number(params.min_score);
  show(askUi.box, true);
  askUi.text.textContent = "";
  clear(askUi.cited);
  askUi.meta.textContent = "Asking…";
  const response = await fetch("api/ask", {
    method: "POST", credentials: "same-origin", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
  });
  if (response.status === 401) { await askForToken(); return askQuestion(event); }
  if (!response.ok) {
    let message = `the server answered ${response.status}`;
    try { message = (await response.json()).error || message; } catch { /* not JSON */ }
    askUi.meta.textContent = message;
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      onAskEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
}

function onAskEvent(block) {
  let kind = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  const payload = JSON.parse(data || "{}");
  if (kind === "chunk") askUi.text.append(payload.text);
  else if (kind === "result") showAnswer(payload);
  else if (kind === "error") askUi.meta.textContent = payload.error;
}

/** A citation opens its photo in the page's detail view (app.js's openPhoto). */
function openCited(event, id) {
  event.preventDefault();
  openPhoto(id);
}

/** The answer again, each [n] a link to the photo it cites; the cited photos below it. */
function showAnswer(doc) {
  if (doc.answer === null) {
    askUi.text.textContent = "";
    askUi.meta.textContent = "No photo matches the question well enough; nothing was sent to the model.";
    return;
  }
  const byN = new Map(doc.citations.map((c) => [c.n, c]));
  const parts = doc.answer.split(/(\[\d{1,3}\])/);
  askUi.text.replaceChildren(...parts.map((part) => {
    const cited = byN.get(Number((part.match(/^\[(\d+)\]$/) || [])[1]));
    return cited ? h("a", { href: `?photo=${cited.id}`, class: "citation", onclick: (e) => openCited(e, cited.id) }, part)
                 : document.createTextNode(part);
  }));
  askUi.cited.replaceChildren(...doc.citations.map((c) => h("li", {},
    h("a", { href: `?photo=${c.id}`, onclick: (e) => openCited(e, c.id) },
      h("img", { src: c.thumbnail_url, alt: "", width: 64, height: 64, loading: "lazy" }),
      h("span", { text: `[${c.n}] ${c.path}` })))));
  const u = doc.usage;
  const photos = doc.photos.length === 1 ? "1 photo" : `${doc.photos.length} photos`;
  askUi.meta.textContent = `${photos} read by ${doc.model}; ${u.prompt_tokens + u.completion_tokens} tokens`;
}

askUi.form.addEventListener("submit", (event) => {
  askQuestion(event).catch((err) => { askUi.meta.textContent = err.message; });
});
