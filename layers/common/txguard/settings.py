"""Configuration read from the environment, in one place.

Every variable txguard reads is defined here; the README's configuration table lists the same names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from txguard import literals


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return literals.integer_from_text(raw, 0, 2**63 - 1)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw[:40]!r} {exc}") from None


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None
    host: str | None
    port: int
    name: str
    secret_arn: str | None
    secret_max_age_s: int
    statement_timeout_ms: int
    lock_timeout_ms: int
    connect_timeout_s: int
    sslmode: str | None
    sslrootcert: str | None

    @classmethod
    def from_env(cls) -> DatabaseSettings:
        statement_timeout_ms = _int("TXGUARD_STATEMENT_TIMEOUT_MS", 5000)
        # Below the statement timeout, so that waiting on another transaction's lock answers "busy".
        lock_timeout_ms = _int("TXGUARD_LOCK_TIMEOUT_MS", statement_timeout_ms // 2)
        if statement_timeout_ms > 0 and not 0 < lock_timeout_ms < statement_timeout_ms:
            raise ValueError(
                f"TXGUARD_LOCK_TIMEOUT_MS={lock_timeout_ms} must be above 0 and below "
                f"TXGUARD_STATEMENT_TIMEOUT_MS={statement_timeout_ms}"
            )
        return cls(
            url=os.environ.get("DATABASE_URL") or None,
            host=os.environ.get("TXGUARD_DB_HOST") or None,
            port=_int("TXGUARD_DB_PORT", 5432),
            name=os.environ.get("TXGUARD_DB_NAME", "txguard"),
            secret_arn=os.environ.get("TXGUARD_DB_SECRET_ARN") or None,
            secret_max_age_s=_int("TXGUARD_DB_SECRET_MAX_AGE", 300),
            statement_timeout_ms=statement_timeout_ms,
            lock_timeout_ms=lock_timeout_ms,
            connect_timeout_s=_int("TXGUARD_CONNECT_TIMEOUT", 5),
            sslmode=os.environ.get("TXGUARD_DB_SSLMODE") or None,
            sslrootcert=os.environ.get("TXGUARD_DB_SSLROOTCERT") or None,
        )


@dataclass(frozen=True)
class ServiceSettings:
    default_currency: str
    max_batch_size: int
    rules_cache_seconds: int
    max_future_skew_s: int
    event_bus_name: str | None
    list_max_limit: int
    alert_publish_budget_ms: int  # the most an ingest call spends publishing alerts after its commit

    @classmethod
    def from_env(cls) -> ServiceSettings:
        return cls(
            default_currency=os.environ.get("TXGUARD_DEFAULT_CURRENCY", "EUR").upper(),
            max_batch_size=_int("TXGUARD_MAX_BATCH_SIZE", 5000),
            rules_cache_seconds=_int("TXGUARD_RULES_CACHE_SECONDS", 10),
            max_future_skew_s=_int("TXGUARD_MAX_FUTURE_SKEW_SECONDS", 86_400),
            event_bus_name=os.environ.get("TXGUARD_EVENT_BUS_NAME") or None,
            list_max_limit=_int("TXGUARD_LIST_MAX_LIMIT", 1000),
            alert_publish_budget_ms=_int("TXGUARD_ALERT_PUBLISH_BUDGET_MS", 3000),
        )


_service_settings: ServiceSettings | None = None


def service_settings() -> ServiceSettings:
    """Read once per execution environment; `reload_settings()` re-reads (tests, local runtime)."""
    global _service_settings
    if _service_settings is None:
        _service_settings = ServiceSettings.from_env()
    return _service_settings


def reload_settings() -> None:
    global _service_settings
    _service_settings = None
