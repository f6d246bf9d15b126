// Small DOM helpers shared by the page's modules. Every text that comes from a description or
// a model is untrusted: h() only ever puts it into text nodes and attributes, never into HTML.

export const $ = (id) => document.getElementById(id);

/** Make an element; strings among the children become text nodes (never HTML). */
export function h(tag, attrs, ...children) {
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

export function clear(node) { node.replaceChildren(); }

/** A path as one piece per folder name ("name/"), each kept on one line (style.css: .path-part)
 * unless that name alone is wider than the line, so a long path wraps between folder names,
 * never at a space or hyphen inside one. */
export function pathText(path) {
  return String(path).split(/(?<=\/)/).map((part) => h("span", { class: "path-part", text: part }));
}

export function show(node, visible) { node.hidden = !visible; }

/** Open, close (or with no `open`, flip) a panel and the button that says whether it is open. */
export function togglePanel(panel, button, open) {
  const visible = open === undefined ? panel.hidden : open;
  panel.hidden = !visible;
  button.setAttribute("aria-expanded", String(visible));
}
