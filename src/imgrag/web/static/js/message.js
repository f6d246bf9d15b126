// The message line above the grid: "Searching…", the count, no results, errors, the hint.

import { $, clear, h } from "./dom.js";

const line = $("message");

export function setMessage(...nodes) {
  clear(line);
  for (const node of nodes) if (node) line.append(node);
}

export function hasMessage() { return line.childNodes.length > 0; }

/** The hint shown with no search; not when `status` says there is no index (its panel says what to do). */
export function introMessage(status) {
  if (status && (!status.exists || !status.index_size)) return;
  setMessage(h("span", { class: "muted", text: "Type what is in the photo you are looking for: “receipt”, “kids at the beach”, “red car in the snow”." }));
}
