"""The stand-in's Batch API: files and batches, as Groq serves them (console.groq.com/docs/batch).

    POST   /openai/v1/files                 multipart upload, purpose "batch" (JSONL, 50,000 lines, 200 MB)
    GET    /openai/v1/files/{id}            file object
    GET    /openai/v1/files/{id}/content    the bytes (input, output or error file)
    DELETE /openai/v1/files/{id}
    POST   /openai/v1/batches               {input_file_id, endpoint, completion_window, metadata}
    GET    /openai/v1/batches               {"object": "list", "data": [...]}, newest first
    GET    /openai/v1/batches/{id}
    POST   /openai/v1/batches/{id}/cancel

(and the same under /v1/ for the openai SDK). A batch moves validating -> in_progress ->
completed, or to failed (a bad input line), expired (its completion window passed) or
cancelling -> cancelled. The state is worked out from the clock whenever a batch is read:
validation takes `validate_s` seconds, each request `request_s` seconds (real time), and the
completion window (24h..7d) lasts window * `time_scale` seconds, as the rate-limit windows do.

Each processed request is answered like a live chat request (the catalog, the content faults
queued with `enqueue_lines`), is not rate limited, and is counted per image content hash in
the same counter as live requests, so a test sees a photo paid twice across live and batch.
Output lines are `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`;
requests that failed go to the error file the same way, and requests a batch never reached
(expired, cancelled) as `{"response": null, "error": {"code": "batch_expired"|"batch_cancelled"}}`.

A free-plan organisation (`free_plan=True`) gets Groq's 403 `not_available_for_plan` from the
files and batches endpoints (the answer reported by users of free keys, e.g.
github.com/jgravelle/GroqApiLibrary pull 21)."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

MAX_FILE_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
CHAT_URL = "/v1/chat/completions"
FREE_PLAN_MESSAGE = (
    "The Batch API is not available for your organization's current plan. "
    "Upgrade to the Developer tier at https://console.groq.com/settings/billing to use it."
)
BATCH_OUTCOMES = {"fail", "expire", "stall"}
TERMINAL = {"completed", "failed", "expired", "cancelled"}
_WINDOW = re.compile(r"^(\d+)([hd])$")


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:26]}"


def window_seconds(window) -> float | None:
    """Groq accepts 24h to 7d."""
    match = _WINDOW.match(window) if isinstance(window, str) else None
    if not match:
        return None
    hours = int(match[1]) * (24 if match[2] == "d" else 1)
    return hours * 3600.0 if 24 <= hours <= 168 else None


@dataclass
class StoredFile:
    id: str
    data: bytes
    filename: str
    purpose: str
    created_at: int

    def as_json(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose}


@dataclass
class Batch:
    id: str
    input_file_id: str
    completion_window: str
    metadata: dict | None
    lines: list[dict]
    window_s: float
    outcome: str | None  # a queued batch fault: fail, expire or stall
    t0: float = field(default_factory=time.monotonic)
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating"
    started: float | None = None  # monotonic time in_progress began
    cancel_at: float | None = None
    done: list[dict] = field(default_factory=list)  # output lines so far
    failed: list[dict] = field(default_factory=list)  # error lines so far
    errors: list[dict] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    stamps: dict = field(default_factory=dict)  # in_progress_at, completed_at, ...

    def as_json(self) -> dict:
        processed = len(self.done) + len(self.failed)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": CHAT_URL,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + int(self.window_s),
            "request_counts": {"total": len(self.lines) if self.status != "validating" else 0,
                               "completed": len(self.done), "failed": len(self.failed)},
            "metadata": self.metadata,
            **{k: self.stamps.get(k) for k in ("in_progress_at", "finalizing_at", "completed_at", "failed_at",
                                               "expired_at", "cancelling_at", "cancelled_at")},
            "processed": processed,  # not Groq's: handy in tests
        }


class BatchAPI:
    """Files and batches of one stand-in server. Thread-safe."""

    def __init__(self, server, validate_s: float = 0.0, request_s: float = 0.0, cancel_s: float = 0.0,
                 free_plan: bool = False, max_lines: int = MAX_FILE_LINES, max_bytes: int = MAX_FILE_BYTES):
        self.server = server
        self.validate_s, self.request_s, self.cancel_s = validate_s, request_s, cancel_s
        self.free_plan = free_plan
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.files: dict[str, StoredFile] = {}
            self.batches: dict[str, Batch] = {}
            self._outcomes: deque[str] = deque()
            self._line_faults: deque[dict] = deque()
            self.processed: Counter = Counter()  # image content hash -> batch requests answered
            self.calls: Counter = Counter()  # endpoint -> calls
            self.call_log: list[tuple[float, str]] = []  # (monotonic time, endpoint) of every call
            self._drops: Counter = Counter()  # endpoint -> replies still to drop after doing the work

    # -- test controls -------------------------------------------------------------------

    def set(self, **settings) -> None:
        with self._lock:
            for name, value in settings.items():
                if name not in ("validate_s", "request_s", "cancel_s", "free_plan", "max_lines", "max_bytes"):
                    raise ValueError(f"unknown batch setting {name!r}")
                setattr(self, name, value)

    def enqueue_batches(self, *outcomes: str) -> None:
        """What the next batches created do: fail (validation), expire (half done, then the
        window runs out), stall (nothing done until it expires)."""
        bad = set(outcomes) - BATCH_OUTCOMES
        if bad:
            raise ValueError(f"unknown batch outcome {sorted(bad)}; known: {sorted(BATCH_OUTCOMES)}")
        with self._lock:
            self._outcomes.extend(outcomes)

    def enqueue_lines(self, *faults) -> None:
        """Faults for the next requests a batch processes (the chat fault kinds)."""
        from standin_vlm import as_fault

        specs = [as_fault(f) for f in faults]
        with self._lock:
            self._line_faults.extend(specs)

    def drop_reply(self, endpoint: str, times: int = 1) -> None:
        """Do the work of the next `times` calls to `endpoint` (upload, create, cancel, ...) but
        reset the connection instead of answering: the client cannot know whether it happened."""
        with self._lock:
            self._drops[endpoint] += times

    def stats(self) -> dict:
        with self._lock:
            for batch in self.batches.values():
                self._advance(batch)
            return {
                "files": len(self.files),
                "batches": {b.id: b.status for b in self.batches.values()},
                "processed": dict(self.processed),
                "calls": dict(self.calls),
            }

    # -- endpoints (called by the HTTP handler): (status, JSON payload or bytes) ---------

    def handle(self, method: str, path: str, content_type: str, body: bytes):
        path = re.sub(r"^/openai", "", path)
        routes = [
            ("POST", r"/v1/files", self._upload),
            ("GET", r"/v1/files/(?P<fid>[\w-]+)/content", self._content),
            ("GET", r"/v1/files/(?P<fid>[\w-]+)", self._file_info),
            ("DELETE", r"/v1/files/(?P<fid>[\w-]+)", self._file_delete),
            ("POST", r"/v1/batches", self._create),
            ("GET", r"/v1/batches", self._list),
            ("GET", r"/v1/batches/(?P<bid>[\w-]+)", self._retrieve),
            ("POST", r"/v1/batches/(?P<bid>[\w-]+)/cancel", self._cancel),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                name = handler.__name__.strip("_")
                with self._lock:
                    self.calls[name] += 1
                    self.call_log.append((time.monotonic(), name))
                    if self.free_plan:
                        return 403, _error(FREE_PLAN_MESSAGE, "not_available_for_plan")
                    answer = handler(content_type=content_type, body=body, **match.groupdict())
                    if self._drops[name] > 0:
                        self._drops[name] -= 1
                        return "drop", None
                    return answer
        return None

    def _upload(self, content_type: str, body: bytes, **_):
        fields = parse_multipart(content_type, body)
        if fields is None or "file" not in fields:
            return 400, _error("'file' : property 'file' is missing", "invalid_request")
        if fields.get("purpose", (None, b""))[1] != b"batch":
            return 400, _error("'purpose' : value must be 'batch'", "invalid_request")
        filename, data = fields["file"]
        if len(data) > self.max_bytes:
            return 400, _error(f"file too large: {len(data)} bytes, the limit is {self.max_bytes}", "invalid_request")
        lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        if lines > self.max_lines:
            return 400, _error(f"file has {lines} lines, the limit is {self.max_lines}", "invalid_request")
        stored = StoredFile(_id("file"), data, filename or "upload.jsonl", "batch", int(time.time()))
        self.files[stored.id] = stored
        return 200, stored.as_json()

    def _file_info(self, fid: str, **_):
        stored = self.files.get(fid)
        return (200, stored.as_json()) if stored else (404, _error(f"file {fid} not found", "not_found"))

    def _file_delete(self, fid: str, **_):
        if self.files.pop(fid, None) is None:
            return 404, _error(f"file {fid} not found", "not_found")
        return 200, {"id": fid, "object": "file", "deleted": True}

    def _content(self, fid: str, **_):
        stored = self.files.get(fid)
        return (200, stored.data) if stored else (404, _error(f"file {fid} not found", "not_found"))

    def _create(self, body: bytes, **_):
        try:
            request = json.loads(body)
        except ValueError:
            return 400, _error("We could not parse the JSON body of your request.", "invalid_json")
        stored = self.files.get(request.get("input_file_id"))
        if stored is None:
            return 400, _error(f"input file {request.get('input_file_id')!r} not found", "invalid_request")
        if request.get("endpoint") != CHAT_URL:
            return 400, _error(f"'endpoint' : value must be '{CHAT_URL}'", "invalid_request")
        seconds = window_seconds(request.get("completion_window"))
        if seconds is None:
            return 400, _error("'completion_window' : durations from 24h to 7d are supported", "invalid_request")
        metadata = request.get("metadata")
        batch = Batch(
            id=_id("batch"), input_file_id=stored.id, completion_window=request["completion_window"],
            metadata=metadata if isinstance(metadata, dict) else None, lines=[],
            window_s=seconds * self.server.time_scale,
            outcome=self._outcomes.popleft() if self._outcomes else None,
        )
        batch.lines = [line for line in stored.data.split(b"\n") if line.strip()]
        self.batches[batch.id] = batch
        return 200, batch.as_json()

    def _list(self, **_):
        batches = sorted(self.batches.values(), key=lambda b: -b.t0)
        for batch in batches:
            self._advance(batch)
        return 200, {"object": "list", "data": [b.as_json() for b in batches], "has_more": False}

    def _retrieve(self, bid: str, **_):
        batch = self.batches.get(bid)
        if batch is None:
            return 404, _error(f"batch {bid} not found", "not_found")
        self._advance(batch)
        return 200, batch.as_json()

    def _cancel(self, bid: str, **_):
        batch = self.batches.get(bid)
        if batch is None:
            return 404, _error(f"batch {bid} not found", "not_found")
        self._advance(batch)
        if batch.status not in TERMINAL and batch.status != "cancelling":
            batch.status, batch.cancel_at = "cancelling", time.monotonic()
            batch.stamps["cancelling_at"] = int(time.time())
            self._advance(batch)
        return 200, batch.as_json()

    # -- the clock -----------------------------------------------------------------------

    def _advance(self, batch: Batch) -> None:
        now = time.monotonic()
        if batch.status == "validating" and now >= batch.t0 + self.validate_s:
            self._validate(batch, now)
        if batch.status == "in_progress":
            if batch.outcome == "stall":
                due = 0
            elif self.request_s > 0:
                due = int((now - batch.started) / self.request_s)
            else:
                due = len(batch.lines)
            if batch.outcome == "expire":
                due = min(due, len(batch.lines) // 2)
            while len(batch.done) + len(batch.failed) < min(due, len(batch.lines)):
                self._process(batch, batch.lines[len(batch.done) + len(batch.failed)])
            if len(batch.done) + len(batch.failed) == len(batch.lines):
                self._finish(batch, "completed")
        if batch.status == "cancelling" and now >= batch.cancel_at + self.cancel_s:
            self._finish(batch, "cancelled")
        if batch.status in ("validating", "in_progress") and now >= batch.t0 + batch.window_s:
            self._finish(batch, "expired")

    def _validate(self, batch: Batch, now: float) -> None:
        errors = []
        custom_ids: set = set()
        for number, raw in enumerate(batch.lines, 1):
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append({"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.",
                               "param": None, "line": number})
                continue
            problem = _line_problem(line, custom_ids)
            if problem:
                errors.append({"code": problem[0], "message": problem[1], "param": problem[2], "line": number})
        if batch.outcome == "fail" and not errors:
            errors.append({"code": "invalid_request", "message": "The batch failed validation.", "param": None,
                           "line": 1})
        if errors:
            batch.status, batch.errors = "failed", errors
            batch.stamps["failed_at"] = int(time.time())
            return
        batch.lines = [json.loads(raw) for raw in batch.lines]
        batch.status, batch.started = "in_progress", batch.t0 + self.validate_s  # when it became valid, not when seen
        batch.stamps["in_progress_at"] = int(time.time())

    def _process(self, batch: Batch, line: dict) -> None:
        fault = self._line_faults.popleft() if self._line_faults else None
        status, payload, images = self.server.batch_reply(line["body"], fault)
        for data in images:
            self.processed[hashlib.sha256(data).hexdigest()] += 1
        out = {"id": _id("batch_req"), "custom_id": line["custom_id"],
               "response": {"status_code": status, "request_id": _id("req"), "body": payload}, "error": None}
        (batch.done if status == 200 else batch.failed).append(out)

    def _finish(self, batch: Batch, status: str) -> None:
        unreached = batch.lines[len(batch.done) + len(batch.failed):] if batch.status != "validating" else []
        if status in ("expired", "cancelled"):
            code = "batch_expired" if status == "expired" else "batch_cancelled"
            message = ("This request could not be executed before the completion window expired."
                       if status == "expired" else "This request was not executed because the batch was cancelled.")
            for line in unreached:
                batch.failed.append({"id": _id("batch_req"), "custom_id": line["custom_id"], "response": None,
                                     "error": {"code": code, "message": message}})
        batch.output_file_id = self._store(batch.done, f"{batch.id}_output.jsonl")
        batch.error_file_id = self._store(batch.failed, f"{batch.id}_error.jsonl")
        batch.status = status
        batch.stamps[f"{status}_at"] = int(time.time())
        if status == "completed":
            batch.stamps["finalizing_at"] = int(time.time())

    def _store(self, lines: list[dict], name: str) -> str | None:
        if not lines:
            return None
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        stored = StoredFile(_id("file"), data, name, "batch_output", int(time.time()))
        self.files[stored.id] = stored
        return stored.id


def _line_problem(line, custom_ids: set) -> tuple[str, str, str] | None:
    if not isinstance(line, dict):
        return "invalid_json_line", "Each line must be a JSON object.", None
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id"
    if custom_id in custom_ids:
        return "duplicate_custom_id", f"The custom_id '{custom_id}' is used more than once.", "custom_id"
    custom_ids.add(custom_id)
    if line.get("method") != "POST":
        return "invalid_method", f"Invalid value: {line.get('method')!r}. Supported values are: 'POST'", "method"
    if line.get("url") != CHAT_URL:
        return "invalid_url", f"Invalid value: {line.get('url')!r}. Supported values are: '{CHAT_URL}'", "url"
    if not isinstance(line.get("body"), dict):
        return "missing_required_parameter", "Missing required parameter: 'body'.", "body"
    return None


def _error(message: str, code: str, type_: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "code": code}}


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]] | None:
    """name -> (filename, bytes) of a multipart/form-data body (the standard library's MIME parser)."""
    if not content_type.startswith("multipart/form-data"):
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return None
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields
