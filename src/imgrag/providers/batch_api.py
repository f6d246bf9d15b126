"""The files and batches endpoints through the provider's own SDK client (groq or openai).

Both SDKs have `files.create/content/delete` and `batches.create/retrieve/list/cancel`;
errors become the provider errors describe already knows, plus one for a plan without Batch.
Reads (list, retrieve, content) are retried as retry.py says; a request that changes something
(upload, create, cancel, delete) is sent once: the next run settles one whose answer was lost."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Any, TypeVar

from imgrag.providers.base import VisionProvider, error_code_and_message
from imgrag.providers.errors import FatalProviderError, ProviderError, TransientError
from imgrag.providers.pacing import Pacer
from imgrag.providers.retry import send_with_retries

CHAT_ENDPOINT = "/v1/chat/completions"
# Uploads and downloads of up to 200 MB get longer than a chat request.
TRANSFER_TIMEOUT = 900.0
LIST_PAGES = 200  # at most this many pages of the batch list are read
T = TypeVar("T")


class BatchNotAvailable(FatalProviderError):
    """The key's plan has no Batch API (Groq's free plan: 403 `not_available_for_plan`)."""


class BatchRefused(FatalProviderError):
    """The server refused a batch request (a 4xx other than the above): a bug or a setting."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Uncertain(TransientError):
    """The request may or may not have reached the server (a timeout or a dropped connection)."""


@dataclass
class RemoteBatch:
    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    created_at: int = 0  # epoch seconds

    @classmethod
    def of(cls, batch: Any) -> RemoteBatch:
        counts = getattr(batch, "request_counts", None)
        errors = getattr(getattr(batch, "errors", None), "data", None) or []
        return cls(
            id=batch.id,
            status=str(batch.status),
            input_file_id=getattr(batch, "input_file_id", None),
            output_file_id=getattr(batch, "output_file_id", None),
            error_file_id=getattr(batch, "error_file_id", None),
            counts={k: int(getattr(counts, k, 0) or 0) for k in ("total", "completed", "failed")} if counts else {},
            metadata=dict(getattr(batch, "metadata", None) or {}),
            errors=[f"line {getattr(e, 'line', '?')}: {getattr(e, 'message', '')}" for e in errors],
            created_at=int(getattr(batch, "created_at", 0) or 0),
        )


class BatchAPI:
    def __init__(self, provider: VisionProvider, max_retries: int) -> None:
        self.provider = provider
        self.client = provider.client
        self.sdk = provider.sdk
        self.max_retries = max_retries  # IMGRAG_MAX_RETRIES, for the reads
        self.pacer = Pacer()  # a 429's retry-after pauses the reads that follow it
        self.stop = threading.Event()  # never set: Ctrl-C interrupts a batch run where it is

    def upload(self, name: str, content: IO[bytes]) -> str:
        created = self._call(lambda: self.client.files.create(
            file=(name, content, "application/jsonl"), purpose="batch", timeout=TRANSFER_TIMEOUT))
        return created.id

    def create(self, file_id: str, window: str, metadata: dict[str, str]) -> RemoteBatch:
        return RemoteBatch.of(self._call(lambda: self.client.batches.create(
            input_file_id=file_id, endpoint=CHAT_ENDPOINT, completion_window=window, metadata=metadata)))

    def retrieve(self, batch_id: str) -> RemoteBatch:
        return RemoteBatch.of(self._read(lambda: self.client.batches.retrieve(batch_id)))

    def cancel(self, batch_id: str) -> RemoteBatch:
        return RemoteBatch.of(self._call(lambda: self.client.batches.cancel(batch_id)))

    def content(self, file_id: str) -> bytes:
        return self._read(lambda: self.client.files.content(file_id, timeout=TRANSFER_TIMEOUT).read())

    def delete_file(self, file_id: str) -> None:
        """Best effort: an input file left behind costs nothing."""
        try:
            self._call(lambda: self.client.files.delete(file_id))
        except ProviderError:
            pass

    def batches(self) -> Iterator[RemoteBatch]:
        """The organisation's batches, newest first, page after page (Groq: `paging.next_cursor`;
        OpenAI: `has_more` + `after`). Raises TransientError if there are too many to read."""
        page = self._read(lambda: self.client.batches.list())
        for _ in range(LIST_PAGES):
            for batch in page.data:
                yield RemoteBatch.of(batch)
            if hasattr(page, "has_next_page"):  # openai's cursor page
                if not page.has_next_page():
                    return
                page = self._read(page.get_next_page)
                continue
            paging = getattr(page, "paging", None) or (page.model_extra or {}).get("paging") or {}
            cursor = paging.get("next_cursor") if isinstance(paging, dict) else getattr(paging, "next_cursor", None)
            if not cursor:
                return
            page = self._read(partial(self.client.batches.list, extra_query={"cursor": cursor}))
        raise TransientError(f"more than {LIST_PAGES} pages of batches on the server: cannot tell which are ours")

    def _read(self, request: Callable[[], T]) -> T:
        """A request that changes nothing on the server, so is safe to send again."""
        return send_with_retries(partial(self._call, request), pacer=self.pacer, stop=self.stop,
                                 max_retries=self.max_retries)

    def _call(self, request: Callable[[], T]) -> T:
        """One request, its errors sorted into ours."""
        sdk = self.sdk
        try:
            return request()
        except sdk.APIStatusError as e:
            raise self._status_error(e) from None
        except (sdk.APITimeoutError, sdk.APIConnectionError) as e:
            where = self.provider.base_url or f"the {self.provider.name} API"
            raise Uncertain(f"no answer from {where} ({e.__cause__ or e})") from None
        except sdk.APIError as e:
            raise TransientError(f"unreadable response ({e})") from None

    def _status_error(self, e: Any) -> ProviderError:
        code, message = error_code_and_message(e)
        if code == "not_available_for_plan":
            return BatchNotAvailable(
                f"the {self.provider.name} Batch API needs a paid plan, and this key's organization is on the free "
                "plan: upgrade at https://console.groq.com/settings/billing, or describe without --batch")
        if e.status_code in (401, 403, 429) or e.status_code >= 500:
            return self.provider.sdk_error(e)  # a bad key, a limit, a server fault: as for live requests
        if e.status_code == 404 and code in ("", "unknown_url"):
            return BatchRefused(f"no Batch API at {self.provider.base_url or 'the default URL'} (404: {message}): "
                                "describe without --batch", 404)
        return BatchRefused(f"the {self.provider.name} Batch API refused the request ({e.status_code}: {message})",
                            e.status_code)
