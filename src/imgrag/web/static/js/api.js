// Calls to the JSON API of `imgrag serve`: fetch, errors as ApiError with the server's
// message, a 401 handed to the login prompt (login.js) and the call retried once it is done.

export class ApiError extends Error {
  constructor(status, message, data) { super(message); this.status = status; this.data = data; }
}

let askForToken = null; // set by login.js: resolves once the user has signed in

/** Who asks for the token when the server answers 401 (the login dialog). */
export function onUnauthorized(prompt) { askForToken = prompt; }

/** fetch + JSON; a 401 asks for the token once (the server keeps it in a cookie) and retries. */
export async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
    delete init.json;
  }
  const response = await fetch(path, init);
  const data = await readJson(response);
  if (response.status === 401 && !options.noLogin && askForToken) {
    await askForToken();
    return api(path, options);
  }
  if (!response.ok) throw failed(response, data);
  return data;
}

/** POST json, then yield each server-sent event of the answer as [kind, data] until it ends. */
export async function* postEvents(path, json) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin", body: JSON.stringify(json),
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
  });
  if (response.status === 401 && askForToken) {
    await askForToken();
    yield* postEvents(path, json);
    return;
  }
  if (!response.ok) throw failed(response, await readJson(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      yield parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
}

function parseEvent(block) {
  let kind = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  return [kind, JSON.parse(data || "{}")];
}

function failed(response, data) {
  return new ApiError(response.status, (data && data.error) || `the server answered ${response.status}`, data);
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return null; }
}

/** The structured description inside a record (the API may nest it or not). */
export function descriptionOf(record) {
  if (record && typeof record.description === "object" && record.description !== null) return record.description;
  return record || {};
}
