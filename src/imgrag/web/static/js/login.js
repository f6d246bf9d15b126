// The login dialog: when the server wants its token (IMGRAG_SERVE_TOKEN), ask for it once,
// sign in (the server keeps a session cookie), then let every waiting API call go on.

import { api, onUnauthorized } from "./api.js";
import { $ } from "./dom.js";

const dialog = $("login");
let waiters = null; // the calls waiting for the sign-in; null while the dialog is not asking

function askForToken() {
  if (!waiters) {
    waiters = [];
    $("login-error").textContent = "";
    if (!dialog.open) dialog.showModal();
    $("login-token").focus();
  }
  return new Promise((resolve) => waiters.push(resolve));
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
  dialog.close();
  const waiting = waiters || [];
  waiters = null;
  waiting.forEach((resolve) => resolve());
}

export function initLogin() {
  onUnauthorized(askForToken);
  dialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without it
  $("login-form").addEventListener("submit", submitToken);
}
