"""Requests and responses of the console as API Gateway (REST, proxy integration) carries them.

Every response carries the security headers: a Content-Security-Policy that allows no script at all and
styles and images only from the stack itself, no framing, no MIME sniffing, no referrer, no caching of pages
that show account data; HSTS when served over HTTPS.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote

from txguard.errors import BadInput

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000; includeSubDomains"
MAX_FORM_BYTES = 1_000_000


@dataclass
class Request:
    method: str
    path: str  # under /console, e.g. "/decisions"
    base: str  # the URL path /console is served at, e.g. "/v1/console" in AWS
    query: dict[str, str]
    form: dict[str, str]
    cookies: dict[str, str]

    def link(self, path: str, **params: Any) -> str:
        """A URL path under the console, with query parameters (None values left out)."""
        query = "&".join(f"{quote(k)}={quote(str(v))}" for k, v in params.items() if v is not None and v != "")
        return self.base + path + (f"?{query}" if query else "")


def _single_values(pairs: list[tuple[str, str]], where: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise BadInput(f"{where} parameter {name!r} is given twice")
        values[name] = value
    return values


def parse(event: Mapping[str, Any]) -> Request:
    """The request an API Gateway proxy event carries. Raises BadInput for a parameter given twice or a body
    that is not a URL-encoded form."""
    path = str(event.get("path") or "/console")
    context_path = str((event.get("requestContext") or {}).get("path") or path)
    stage_prefix = context_path[: -len(path)] if context_path.endswith(path) else ""
    inner = path[len("/console") :] if path.startswith("/console") else path
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    multi = event.get("multiValueQueryStringParameters") or {}
    pairs = [(k, v) for k, vs in multi.items() for v in (vs or [])] or list(
        (event.get("queryStringParameters") or {}).items()
    )
    query = _single_values(pairs, "query")
    form: dict[str, str] = {}
    method = str(event.get("httpMethod") or "GET").upper()
    body = event.get("body")
    if method == "POST" and body:
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else str(body).encode()
        if len(raw) > MAX_FORM_BYTES:
            raise BadInput(f"the form is larger than {MAX_FORM_BYTES} bytes")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise BadInput(f"a form must be application/x-www-form-urlencoded, not {content_type or 'untyped'}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput("the form is not UTF-8 text") from None
        form = _single_values(parse_qsl(text, keep_blank_values=True), "form")
    cookies: dict[str, str] = {}
    cookie_header = headers.get("cookie")
    if cookie_header:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookie_header)
        except CookieError:
            jar = SimpleCookie()
        cookies = {name: morsel.value for name, morsel in jar.items()}
    return Request(method, inner or "/", stage_prefix + "/console", query, form, cookies)


@dataclass
class Response:
    status: int
    body: str | bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[str] = field(default_factory=list)

    def to_event(self, secure: bool) -> dict[str, Any]:
        headers = {**SECURITY_HEADERS, "Content-Type": self.content_type, **self.headers}
        if secure:
            headers["Strict-Transport-Security"] = HSTS
        multi: dict[str, list[str]] = {"Set-Cookie": self.cookies} if self.cookies else {}
        if isinstance(self.body, bytes):
            body, encoded = base64.b64encode(self.body).decode(), True
        else:
            body, encoded = self.body, False
        return {
            "statusCode": self.status,
            "headers": headers,
            "multiValueHeaders": multi,
            "body": body,
            "isBase64Encoded": encoded,
        }


def redirect(location: str, cookies: list[str] | None = None) -> Response:
    """303 See Other: after a form, the browser GETs the next page."""
    return Response(303, "", headers={"Location": location}, cookies=cookies or [])


def session_cookie(name: str, value: str, base: str, max_age: int, secure: bool) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, scoped to the console's path, Secure over HTTPS."""
    parts = [f"{name}={value}", f"Path={base}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def csv_response(filename: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Response:
    """A table's numbers as a CSV download."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    safe = "".join(c for c in filename if c.isalnum() or c in "-_") or "table"
    return Response(
        200,
        out.getvalue(),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{safe}.csv"'},
    )
