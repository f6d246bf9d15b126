// Numbers, scores, dates, durations and sizes as the page writes them.

export function formatScore(score) {
  return typeof score === "number" ? score.toFixed(2) : String(score ?? "");
}

/** The date as the camera recorded it (local time where the photo was taken): no time-zone shift. */
export function formatDate(text, withTime = false) {
  if (!text) return "";
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2}))?/.exec(String(text));
  if (!m) return String(text);
  const date = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +(m[4] || 0), +(m[5] || 0)));
  const options = { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" };
  if (withTime && m[4]) Object.assign(options, { hour: "2-digit", minute: "2-digit" });
  return new Intl.DateTimeFormat(undefined, options).format(date);
}

export function formatNumber(n) { return typeof n === "number" ? n.toLocaleString() : String(n ?? ""); }

/** "1 photo", "2 photos": a count and its noun, agreeing. */
export function countOf(n, one, many = `${one}s`) { return `${formatNumber(n)} ${n === 1 ? one : many}`; }

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function formatBytes(n) {
  if (typeof n !== "number") return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}
