"""The server's safety rules, checked before any route runs (a plain ASGI middleware):

- the Host header must name this server (DNS rebinding): localhost, the bound address, or
  a name given with --allow-host;
- with a token (IMGRAG_SERVE_TOKEN or --token-file; required off loopback), every route but
  /healthcheck and the page's own files needs it: `Authorization: Bearer`, or the cookie
  that POST /api/login sets;
- requests that write or spend (every method but GET/HEAD/OPTIONS) refuse cross-site
  browsers (Origin, Sec-Fetch-Site); scripts send no Origin and are let through;
- oversized URLs and bodies are refused before they are read whole."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

SESSION_COOKIE = "imgrag_session"
MAX_URL_QUERY = 16 * 1024  # bytes of query string; a 1 MB query is refused, not parsed
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


def session_value(token: str) -> str:
    """What the login cookie holds: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"imgrag serve session", hashlib.sha256).hexdigest()


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


def _host_name(host_header: str) -> str:
    """The name in a Host header, without the port ('[::1]:8000' -> '::1')."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    def __init__(self, app, rules: Rules) -> None:
        self.app = app
        self.rules = rules
        self.names = rules.host_names()
        self.session = session_value(rules.token) if rules.token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limited = self._limited(receive, self.rules.max_body) if self.rules.max_body is not None else receive
        await self.app(scope, limited, self._headers(scope, send))

    def check(self, scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        if len(scope.get("query_string") or b"") > MAX_URL_QUERY:
            return _error(414, f"the URL's query is too long (over {MAX_URL_QUERY} bytes)")
        if _host_name(headers.get("host", "")) not in self.names:
            return _error(403, "this server does not answer to that Host name (start it with --allow-host NAME to add one)")
        method = scope["method"]
        if method not in SAFE_METHODS:
            why = self._cross_site(headers)
            if why:
                return _error(403, why)
        preflight = method == "OPTIONS" and self.rules.cors is not None  # browsers send no credentials in these
        if (self.rules.token and self.session and not preflight and not self._public(scope["path"])
                and not self._authorised(headers, self.rules.token, self.session)):
            return _error(401, "authentication required: send Authorization: Bearer <token>, or log in on the page",
                          login=True)
        length = headers.get("content-length")
        limit = self.rules.max_body
        if limit is not None and length is not None and (not length.isdigit() or int(length) > limit):
            return _error(413, f"the request body is too large (over {limit} bytes)")
        return None

    def _public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    def _authorised(self, headers: Headers, token: str, session: str) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value and hmac.compare_digest(value.strip().encode(), token.encode()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is simply no login
            return False
        morsel = cookie.get(SESSION_COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), session.encode())

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
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower() \
            and _host_name(parts.netloc) in self.names

    def _limited(self, receive, limit: int):
        """Stop reading a body that grows past max_body (one sent without Content-Length)."""
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        return limited

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


class BodyTooLarge(Exception):
    """Raised while a body is read; the app turns it into 413."""
