"""Kept for imports outside the layer's core until they move: the API's schemas are api/schemas.py, the
transaction's fields and their validation intake.py."""

from txguard.intake import INT64_MAX as INT64_MAX
from txguard.intake import INT64_MIN as INT64_MIN
from txguard.intake import parse_timestamp_ms as parse_timestamp_ms
