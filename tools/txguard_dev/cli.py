"""The `txguard` command: one subcommand per module, each registering its own arguments.

Subcommand modules are imported only when their command runs, so `txguard db migrate` does not pay for
the local server's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from txguard_dev.commands.common import CommandError

# command name -> (module providing `register(parser)` and `run(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("txguard_dev.commands.db", "database setup: migrate, status, reset (development only)"),
    "rules": ("txguard_dev.commands.rules", "rule sets: list, apply, disable, history"),
    "backtest": ("txguard_dev.commands.backtest", "evaluate a candidate rule set on stored history"),
    "generate": (
        "txguard_dev.commands.generate",
        "labelled synthetic transactions: to the API, the database or a file",
    ),
    "evaluate": (
        "txguard_dev.commands.evaluate",
        "precision, recall and F1 of stored decisions against generated labels",
    ),
    "train": (
        "txguard_dev.commands.train",
        "train a model on stored features and the labels known at a cutoff; register it as a candidate",
    ),
    "models": ("txguard_dev.commands.models", "the model registry: list, show, shadow, promote, retire, rollback"),
    "labels": ("txguard_dev.commands.labels", "labels: import a CSV or JSON-lines file into the labels store"),
    "lists": (
        "txguard_dev.commands.lists",
        "allow, block and custom lists: create, ls, show, set, add, remove, import",
    ),
    "replay": (
        "txguard_dev.commands.replay",
        "send a labelled file through ingest in time order, releasing labels after a delay",
    ),
    "dlq": ("txguard_dev.commands.dlq", "the stream ingest dead-letter queue: list, redrive"),
    "console": ("txguard_dev.commands.console", "the analyst console's rollups: refresh"),
    "openapi": ("txguard_dev.commands.openapi", "print or write the API's OpenAPI document"),
    "local": ("txguard_dev.local.command", "run the whole service locally (API, scheduler, database)"),
    "invoke": ("txguard_dev.local.invoke_command", "invoke one function of the template in-process"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="txguard", description="Transaction fraud detection")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name == wanted:
            chosen = importlib.import_module(module_name)
            chosen.register(command_parser)
    return parser, chosen


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    subcommand = getattr(args, f"{args.command}_command", None)  # `db reset`, `rules apply`
    command = f"txguard {args.command}{' ' + subcommand if subcommand else ''}"
    try:
        return int(module.run(args) or 0)  # type: ignore[attr-defined]
    except CommandError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C: the `with` blocks it unwound rolled an open database transaction back
        print(
            f"{command}: interrupted (an open database transaction was rolled back; what was committed stays)",
            file=sys.stderr,
        )
        return 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
    except BrokenPipeError:  # `txguard ... | head`: the reader is gone, nothing to report
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
