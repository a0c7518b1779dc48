"""Who is signed in: the sign-in key, the signed session cookie and the CSRF tokens bound to a session.

A session is a cookie holding {analyst, session id, expiry} and an HMAC-SHA256 of them under the session key
(RFC 2104); nothing is stored server side, so a session ends at its expiry or when its cookie is deleted
(sign-out). A CSRF token is "<issued at>.<HMAC(session key, 'csrf' | session id | issued at)>": valid only
for the session it was issued to and for CSRF_SECONDS after issue (the synchroniser-token pattern of the
OWASP CSRF Prevention Cheat Sheet, keyed by the session instead of stored with it).

Keys: locally (txguard local) the sign-in key is the API key and the session key is drawn per run; in AWS both
are Secrets Manager secrets the stack generates (TXGUARD_CONSOLE_SIGNIN_SECRET_ARN,
TXGUARD_CONSOLE_SESSION_SECRET_ARN), read once per execution environment and cached for five minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

SESSION_SECONDS = 8 * 3600
CSRF_SECONDS = 2 * 3600
COOKIE = "txguard_console"
ANALYST_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_SECRET_MAX_AGE_S = 300


@dataclass(frozen=True)
class Keys:
    signin_key: str | None  # None: any key signs in (txguard local --no-auth)
    session_key: bytes
    secure_cookies: bool  # Secure cookies and HSTS: in AWS (HTTPS), not on http://127.0.0.1


@dataclass(frozen=True)
class Session:
    analyst: str
    session_id: str
    expires_at: int  # epoch seconds


def keys_from_env() -> Keys:
    """The keys this execution environment signs with. Raises RuntimeError when none is configured (the
    console then answers nothing rather than accept unsigned sessions)."""
    signin_arn = os.environ.get("TXGUARD_CONSOLE_SIGNIN_SECRET_ARN")
    session_arn = os.environ.get("TXGUARD_CONSOLE_SESSION_SECRET_ARN")
    if signin_arn and session_arn:
        from aws_lambda_powertools.utilities import parameters  # boto3: only in AWS, only when needed

        signin = str(parameters.get_secret(signin_arn, max_age=_SECRET_MAX_AGE_S))
        session = str(parameters.get_secret(session_arn, max_age=_SECRET_MAX_AGE_S))
        return Keys(signin, session.encode(), secure_cookies=True)
    session_key = os.environ.get("TXGUARD_CONSOLE_SESSION_KEY")
    if not session_key:
        raise RuntimeError("the console has no session key: set TXGUARD_CONSOLE_SESSION_KEY or the secret ARNs")
    no_auth = os.environ.get("TXGUARD_CONSOLE_NO_AUTH") == "true"
    signin_key = None if no_auth else os.environ.get("TXGUARD_CONSOLE_SIGNIN_KEY")
    if signin_key is None and not no_auth:
        raise RuntimeError("the console has no sign-in key: set TXGUARD_CONSOLE_SIGNIN_KEY")
    return Keys(signin_key, session_key.encode(), secure_cookies=False)


def _mac(key: bytes, *parts: str) -> str:
    digest = hmac.new(key, "|".join(parts).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def key_matches(keys: Keys, given: str) -> bool:
    """Whether `given` is the sign-in key (constant-time comparison)."""
    if keys.signin_key is None:
        return True
    return hmac.compare_digest(given.encode(), keys.signin_key.encode())


def issue(keys: Keys, analyst: str, now: float | None = None) -> tuple[Session, str]:
    """A new session for `analyst` and its cookie value."""
    now = time.time() if now is None else now
    session = Session(analyst, secrets.token_urlsafe(16), int(now) + SESSION_SECONDS)
    payload = (
        base64.urlsafe_b64encode(
            json.dumps({"a": session.analyst, "s": session.session_id, "e": session.expires_at}).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    return session, f"{payload}.{_mac(keys.session_key, 'session', payload)}"


def read(keys: Keys, cookie: str | None, now: float | None = None) -> Session | None:
    """The session a cookie value carries, or None when it is missing, forged, malformed or expired."""
    if not cookie or cookie.count(".") != 1:
        return None
    payload, mac = cookie.split(".")
    if not hmac.compare_digest(mac.encode(), _mac(keys.session_key, "session", payload).encode()):
        return None
    try:
        data: Any = json.loads(base64.urlsafe_b64decode(payload.encode() + b"=" * (-len(payload) % 4)))
        session = Session(str(data["a"]), str(data["s"]), int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    now = time.time() if now is None else now
    if session.expires_at <= now or not ANALYST_NAME.match(session.analyst):
        return None
    return session


def csrf_token(keys: Keys, session: Session, now: float | None = None) -> str:
    """A CSRF token for forms shown to this session."""
    issued = str(int(time.time() if now is None else now))
    return f"{issued}.{_mac(keys.session_key, 'csrf', session.session_id, issued)}"


def csrf_valid(keys: Keys, session: Session, token: str | None, now: float | None = None) -> bool:
    """Whether `token` was issued to this session less than CSRF_SECONDS ago."""
    if not token or token.count(".") != 1:
        return False
    issued, mac = token.split(".")
    if not issued.isascii() or not issued.isdigit() or len(issued) > 12:
        return False
    if not hmac.compare_digest(mac.encode(), _mac(keys.session_key, "csrf", session.session_id, issued).encode()):
        return False
    now = time.time() if now is None else now
    return int(issued) <= now + 5 and now - int(issued) < CSRF_SECONDS
