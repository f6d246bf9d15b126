"""What the chat model is told about each retrieved photo, read from descriptions.jsonl.

Only what a question may need: the description's fields, the date, the folder (relative
to the index, never the full path), and GPS coordinates when the photo has them."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from imgrag.store.workspace import Workspace

if TYPE_CHECKING:
    from imgrag.search.ranking import Hit

_SHA_KEY = b'"sha256":"'


def load_records(ws: Workspace, shas: list[str]) -> dict[str, dict[str, Any]]:
    """The newest description record of each photo in `shas`: one pass over the log that
    parses only those photos' lines (JSON escapes quotes in values, so `"sha256":"` is a key)."""
    wanted = {sha.encode() for sha in shas}
    found: dict[str, dict[str, Any]] = {}
    try:
        f = ws.paths.descriptions.open("rb")
    except FileNotFoundError:
        return found
    with f:
        for raw in f:
            at = raw.find(_SHA_KEY)
            if at == -1 or raw[at + len(_SHA_KEY): at + len(_SHA_KEY) + 64] not in wanted or not raw.endswith(b"\n"):
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("description"), dict):
                found[record["sha256"]] = record
    return found


def _photo_time(hit: Hit, record: dict[str, Any] | None) -> dict[str, str]:
    taken = (record or {}).get("taken") or hit.taken
    if taken:
        return {"taken": str(taken)[:16].replace("T", " ")}
    mtime = (record or {}).get("mtime")
    if isinstance(mtime, (int, float)):
        return {"file_time": datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M")}
    return {}


def _folder(ws: Workspace | None, path: str) -> str:
    if ws is None:  # a library in PostgreSQL: its paths are absolute, on their own machines
        return os.path.dirname(path)
    try:
        return os.path.relpath(os.path.dirname(path), ws.base)
    except ValueError:
        return os.path.basename(os.path.dirname(path))


def _nonempty(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if v not in (None, "", [], {})}


def answer_item(ws: Workspace | None, hit: Hit, record: dict[str, Any] | None) -> dict[str, Any]:
    """One photo for `ask`: caption, description, objects, visible text, date, folder, GPS."""
    d = (record or {}).get("description") or {"caption": hit.caption}
    people = d.get("people") or {}
    item = {
        **_photo_time(hit, record),
        "folder": _folder(ws, hit.path),
        "caption": d.get("caption"),
        "description": d.get("description"),
        "objects": d.get("objects"),
        "people": ({"count": people.get("count"), "activities": people.get("activities")}
                   if people.get("count") else None),
        "setting": d.get("setting"),
        "activities": d.get("activities"),
        "visible_text": d.get("text"),
        "time_of_day": d.get("time_of_day") if d.get("time_of_day") != "unknown" else None,
    }
    gps = (record or {}).get("gps")
    if isinstance(gps, list) and len(gps) == 2:
        item["gps"] = [round(float(gps[0]), 5), round(float(gps[1]), 5)]
    return _nonempty(item)


def verify_item(hit: Hit, record: dict[str, Any] | None) -> dict[str, Any]:
    """One candidate for `search --verify`: what the photo shows, nothing about where it is
    kept or when (so a verdict stays valid when the photo moves)."""
    d = (record or {}).get("description") or {"caption": hit.caption}
    return _nonempty({
        "caption": d.get("caption"),
        "description": d.get("description"),
        "objects": d.get("objects"),
        "setting": d.get("setting"),
        "activities": d.get("activities"),
        "visible_text": d.get("text"),
    })
