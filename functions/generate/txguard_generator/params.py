"""The generator's parameters: one set of names for CLI flags, the scheduled function's environment and its event.

`num_transactions` -> `--num-transactions`, `TXGUARD_GENERATE_NUM_TRANSACTIONS`, `{"detail": {"num_transactions"}}`.
Every source goes through `parse_params`, so a value means the same wherever it is given.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from txguard import literals
from txguard_generator.ids import MAX_TRANSACTIONS_PER_RUN

ENV_PREFIX = "TXGUARD_GENERATE_"
# Where the scheduled function finds the API key in `api` mode: an SSM parameter name or a secret's ARN/name.
API_KEY_PARAMETER_ENV = "TXGUARD_GENERATE_API_KEY_PARAMETER"
API_KEY_ENV = "TXGUARD_API_KEY"

EARLIEST_START_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, the earliest timestamp the API accepts
MAX_BATCH_SIZE = 5000  # the API's largest batch
MAX_ACCOUNTS = 10_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Mode = Literal["direct", "api", "file"]
MODES: tuple[Mode, ...] = ("direct", "api", "file")


class ParameterError(ValueError):
    """A parameter with a value the generator cannot use; the message names the parameter."""


@dataclass(frozen=True)
class GenerateParams:
    num_transactions: int = 20_000
    num_accounts: int = 500
    fraud_rate: float = 0.02  # share of the transactions that belong to a fraud pattern
    start: int | None = None  # epoch ms of the first one; None: the run ends within the day before now
    mean_gap: float = 28_800.0  # mean seconds between two transactions of one account (8 h: 3 a day)
    seed: int | None = None  # None: a fresh seed, reported with the run
    batch_size: int = 500
    post_url: str | None = None
    mode: Mode = "direct"

    def __post_init__(self) -> None:
        if not 1 <= self.num_transactions <= MAX_TRANSACTIONS_PER_RUN:
            raise ParameterError(f"num_transactions must be from 1 to {MAX_TRANSACTIONS_PER_RUN}")
        if not 1 <= self.num_accounts <= MAX_ACCOUNTS:
            raise ParameterError(f"num_accounts must be from 1 to {MAX_ACCOUNTS}")
        if not 0 <= self.fraud_rate <= 0.5:
            raise ParameterError("fraud_rate must be from 0 to 0.5")
        if self.start is not None and self.start < EARLIEST_START_MS:
            raise ParameterError("start must be 2000-01-01T00:00:00Z or later")
        if not 0.001 <= self.mean_gap <= 365 * 86_400:
            raise ParameterError("mean_gap must be from 0.001 to 31536000 seconds")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ParameterError("seed must be a non-negative 64-bit integer")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ParameterError(f"batch_size must be from 1 to {MAX_BATCH_SIZE}")
        if self.mode not in MODES:
            raise ParameterError(f"mode must be one of {', '.join(MODES)}")
        if self.mode == "api" and not self.post_url:
            raise ParameterError("mode api needs post_url (the URL of POST /store_data)")
        if self.post_url is not None:
            check_post_url(self.post_url)


def check_post_url(url: str) -> None:
    """Refuse a URL the API key must not be sent to: anything but https://, or http:// to this machine.

    Raises ParameterError naming post_url.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError as exc:
        raise ParameterError(f"post_url {url!r} is not a URL: {exc}") from None
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host:
        if _is_loopback(host):
            return
        raise ParameterError(
            f"post_url {url!r}: http:// is accepted only for this machine (localhost, 127.0.0.0/8, ::1); "
            "the API key would cross the network in clear text, use https://"
        )
    raise ParameterError(f"post_url must be an https:// URL (or http:// to this machine), not {url!r}")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


PARAMETER_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerateParams))


def env_name(parameter: str) -> str:
    return ENV_PREFIX + parameter.upper()


def parse_params(raw: Mapping[str, Any], base: GenerateParams | None = None) -> GenerateParams:
    """`base` with the given values replaced; values may be strings (environment) or JSON values (events).

    Empty strings and None leave a value as it is in `base`, so an unset template parameter changes nothing.
    """
    unknown = sorted(set(raw) - set(PARAMETER_NAMES))
    if unknown:
        raise ParameterError(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(PARAMETER_NAMES)}")
    changes: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None or value == "":
            continue
        try:
            changes[name] = _PARSERS[name](value)
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"{name}: {exc}") from None
    return dataclasses.replace(base or GenerateParams(), **changes)


def params_from_env(environ: Mapping[str, str], base: GenerateParams | None = None) -> GenerateParams:
    return parse_params({name: environ.get(env_name(name)) for name in PARAMETER_NAMES}, base)


def _integer(value: Any) -> int:
    """A JSON integer (event) or integer text (environment, CLI) by the one rule of `txguard.literals`; the range
    is checked by GenerateParams, naming the parameter."""
    if isinstance(value, str):
        try:
            return literals.integer_from_text(value, -(2**63), 2**63 - 1)
        except ValueError:
            raise ValueError(
                f"expected an integer in ASCII digits (no '_', '+', spaces, leading zeros, fraction or exponent), "
                f"got {value[:40]!r}"
            ) from None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"expected an integer, got {str(value)[:40]!r}")


def _number(value: Any) -> float:
    """A JSON number (event) or decimal text (environment, CLI) by the one rule of `txguard.literals`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {str(value)[:40]!r}")
    number = float(literals.decimal(value)) if isinstance(value, str) else float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return number


def parse_start(value: Any) -> int:
    """Epoch milliseconds (an integer) or an RFC 3339 date-time with a zone, as the API reads a timestamp."""
    digits = value.removeprefix("-") if isinstance(value, str) else ""
    if isinstance(value, str) and not (digits.isascii() and digits.isdigit()):
        return literals.rfc3339_ms(value)
    return _integer(value)


def _mode(value: Any) -> Mode:
    text = str(value).strip().lower()
    for mode in MODES:
        if text == mode:
            return mode
    raise ValueError(f"expected one of {', '.join(MODES)}, got {value!r}")


def _url(value: Any) -> str:
    return str(value).strip()


_PARSERS: dict[str, Any] = {
    "num_transactions": _integer,
    "num_accounts": _integer,
    "fraud_rate": _number,
    "start": parse_start,
    "mean_gap": _number,
    "seed": _integer,
    "batch_size": _integer,
    "post_url": _url,
    "mode": _mode,
}
