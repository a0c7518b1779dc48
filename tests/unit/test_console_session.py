"""Console sessions and CSRF tokens: signed, bound to their session, and short-lived."""

from __future__ import annotations

from txguard.console import session
from txguard.console.session import Keys

KEYS = Keys(signin_key="k", session_key=b"s" * 32, secure_cookies=True)
OTHER = Keys(signin_key="k", session_key=b"t" * 32, secure_cookies=True)
NOW = 1_800_000_000.0


def test_a_session_reads_back_until_it_expires() -> None:
    issued, cookie = session.issue(KEYS, "alice", now=NOW)
    assert session.read(KEYS, cookie, now=NOW + 60) == issued
    assert session.read(KEYS, cookie, now=NOW + session.SESSION_SECONDS) is None
    assert session.read(OTHER, cookie, now=NOW) is None  # signed with another key


def test_a_changed_session_cookie_is_refused() -> None:
    _, cookie = session.issue(KEYS, "alice", now=NOW)
    payload, mac = cookie.split(".")
    _, bobs = session.issue(KEYS, "bob", now=NOW)
    assert session.read(KEYS, bobs.split(".")[0] + "." + mac, now=NOW) is None
    assert session.read(KEYS, payload + ".", now=NOW) is None
    assert session.read(KEYS, "", now=NOW) is None
    assert session.read(KEYS, "a.b.c", now=NOW) is None


def test_a_csrf_token_holds_for_its_own_session_only_and_expires() -> None:
    alice, _ = session.issue(KEYS, "alice", now=NOW)
    bob, _ = session.issue(KEYS, "bob", now=NOW)
    token = session.csrf_token(KEYS, alice, now=NOW)
    assert session.csrf_valid(KEYS, alice, token, now=NOW + 10)
    assert not session.csrf_valid(KEYS, bob, token, now=NOW + 10)
    assert not session.csrf_valid(KEYS, alice, token, now=NOW + session.CSRF_SECONDS)
    assert not session.csrf_valid(KEYS, alice, None, now=NOW)
    issued, mac = token.split(".")
    assert not session.csrf_valid(KEYS, alice, f"{int(issued) + 1}.{mac}", now=NOW + 10)  # a changed time


def test_the_sign_in_key_is_compared_whole() -> None:
    assert session.key_matches(KEYS, "k")
    assert not session.key_matches(KEYS, "k ")
    assert not session.key_matches(KEYS, "")
