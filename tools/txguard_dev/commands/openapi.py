"""`txguard openapi [--out FILE]`: the API's OpenAPI 3 document (docs/openapi.json is this, committed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from txguard.api.app import openapi_json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="write to this file instead of stdout")


def run(args: argparse.Namespace) -> int:
    document = openapi_json() + "\n"
    if args.out is None:
        print(document, end="")
    else:
        args.out.write_text(document, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0
