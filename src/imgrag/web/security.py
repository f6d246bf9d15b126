"""The server's safety rules, checked before any route runs (a plain ASGI middleware):

- the Host header must name this server (DNS rebinding): localhost, the bound address, or
  a name given with --allow-host;
- with a token (IMGRAG_SERVE_TOKEN or --token-file; required off loopback), every route but
  /healthcheck and the page's own files needs it: `Authorization: Bearer`, or the session
  cookie that POST /api/login sets (sessions.py); wrong tokens are throttled per client;
- requests that write or spend (every method but GET/HEAD/OPTIONS, and GET /api/search with
  verify) refuse cross-site browsers (Origin, Sec-Fetch-Site); scripts send no Origin and are
  let through;
- oversized URLs and bodies are refused (414, 413) before they are read whole."""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from imgrag.web.sessions import Sessions, SignedSessions, Throttle

SESSION_COOKIE = "imgrag_session"
MAX_URL_QUERY = 16 * 1024  # bytes of query string; a 1 MB query is refused, not parsed
MAX_URL_PATH = 16 * 1024  # bytes of path, likewise
MAX_BODY = 1024 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Reachable without the token: the liveness probe, and the page itself (it holds no data, and
# must load to show its login form).
PUBLIC_PATHS = frozenset({"/healthcheck", "/", "/favicon.ico", "/api/login"})
PUBLIC_PREFIXES = ("/static/",)
# The page's own files: scripts only from here, never framed.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Rules:
    host: str  # the bound address
    port: int
    token: str | None = None
    allow_hosts: list[str] = field(default_factory=list)
    cors: str | None = None  # the one other origin allowed to call (--cors)
    max_body: int | None = MAX_BODY  # bytes, past which a body is refused (413); None: the app limits them itself

    def host_names(self) -> set[str]:
        names = {"localhost", "127.0.0.1", "::1", self.host.lower().strip("[]")}
        return names | {h.lower() for h in self.allow_hosts}


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


# A Host header (RFC 9110 7.2): a name or IPv4 address, or an IPv6 address in brackets, then
# an optional numeric port. Anything else ('[::1]evil.example', 'localhost:evil') names nothing.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::\d{1,5})?")


def _host_name(host_header: str) -> str | None:
    """The name in a Host header, without the port ('[::1]:8000' -> '::1'); None: not a Host."""
    found = _HOST.fullmatch(host_header.strip().lower())
    return (found["v6"] or found["name"]) if found else None


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def spends(scope) -> bool:
    """A GET that costs money: /api/search?verify=1 calls the answer model."""
    if scope["path"] != "/api/search":
        return False
    query = (scope.get("query_string") or b"").decode("latin-1")
    return any(k == "verify" and v.strip().lower() not in ("", "0", "false", "off", "no")
               for k, v in parse_qsl(query, keep_blank_values=True))


class Guard:
    def __init__(self, app, rules: Rules, sessions: Sessions | SignedSessions, throttle: Throttle) -> None:
        self.app = app
        self.rules = rules
        self.names = rules.host_names()
        self.sessions = sessions
        self.throttle = throttle

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if self.rules.max_body is None:  # the app limits bodies itself
            await self.app(scope, receive, self._headers(scope, send))
        else:
            await self._limited(scope, receive, self._headers(scope, send), self.rules.max_body)

    def check(self, scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        if len(scope.get("query_string") or b"") > MAX_URL_QUERY:
            return _error(414, f"the URL's query is too long (over {MAX_URL_QUERY} bytes)")
        if len(scope.get("raw_path") or scope["path"].encode()) > MAX_URL_PATH:
            return _error(414, f"the URL's path is too long (over {MAX_URL_PATH} bytes)")
        if _host_name(headers.get("host", "")) not in self.names:
            return _error(403, "this server does not answer to that Host name (start it with --allow-host NAME to add one)")
        method = scope["method"]
        if method not in SAFE_METHODS or spends(scope):
            why = self._cross_site(headers)
            if why:
                return _error(403, why)
        preflight = method == "OPTIONS" and self.rules.cors is not None  # browsers send no credentials in these
        if self.rules.token and not preflight and not self._public(scope["path"]):
            refusal = self._authorise(headers, self.rules.token, _client(scope))
            if refusal is not None:
                return refusal
        length = headers.get("content-length")
        limit = self.rules.max_body
        if limit is not None and length is not None and (not length.isdigit() or int(length) > limit):
            return _error(413, f"the request body is too large (over {limit} bytes)")
        return None

    def _public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    def _authorise(self, headers: Headers, token: str, client: str) -> JSONResponse | None:
        """None when the request may pass: a live session cookie, or the right Bearer token
        from a client not throttled. A wrong token counts against its client (sessions.py)."""
        session = session_cookie(headers.get("cookie", ""))
        if session is not None and self.sessions.valid(session):
            return None
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            refusal = throttled(self.throttle, client)
            if refusal is not None:
                return refusal
            if hmac.compare_digest(value.strip().encode(), token.encode()):
                return None
            self.throttle.failed(client)
            return _error(401, "wrong token", login=True)
        if session is not None:
            return _error(401, "the session has expired or was logged out: log in again", login=True)
        return _error(401, "authentication required: send Authorization: Bearer <token>, or log in on the page",
                      login=True)

    def _cross_site(self, headers: Headers) -> str | None:
        """Why a writing request looks cross-site, or None."""
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if origin is not None:
            foreign = origin == "null" or not self._own_origin(origin, headers.get("host", ""))
            if foreign and not (self.rules.cors and origin == self.rules.cors):
                return f"cross-site request refused (Origin {origin} is not this server)"
            return None
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        return None

    def _own_origin(self, origin: str, host_header: str) -> bool:
        try:
            parts = urlsplit(origin)
        except ValueError:  # 'http://[' : not an origin at all
            return False
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower() \
            and _host_name(parts.netloc) in self.names

    async def _limited(self, scope, receive, send, limit: int) -> None:
        """Run the app, answering 413 from here when a body grows past `limit` (a chunked one
        has no Content-Length to refuse it by). The app is then told the client left, and
        whatever it answers after that is dropped: FastAPI would call the cut body a 400."""
        seen = 0
        refused = started = False

        async def receiving():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    if not started:
                        await _error(413, f"the request body is too large (over {limit} bytes)")(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def sending(message):
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, receiving, sending)

    def _headers(self, scope, send):
        """Headers every answer carries (and the page's content policy)."""
        page = scope["path"] == "/" or scope["path"].startswith(PUBLIC_PREFIXES)

        async def sending(message):
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY")]
                if page:
                    extra.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return sending


def session_cookie(header: str) -> str | None:
    """The session in a Cookie header, if any (a malformed header holds none)."""
    cookie = SimpleCookie()
    try:
        cookie.load(header)
    except Exception:  # noqa: BLE001 - http.cookies raises several kinds on bad input
        return None
    morsel = cookie.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else None


def throttled(throttle: Throttle, client: str) -> JSONResponse | None:
    """429 while `client` has sent too many wrong tokens, else None."""
    wait = throttle.wait(client)
    if wait <= 0:
        return None
    seconds = max(1, round(wait + 0.5))
    return JSONResponse({"error": f"too many wrong tokens from {client}: try again in {seconds} s", "login": True},
                        status_code=429, headers={"Retry-After": str(seconds)})
