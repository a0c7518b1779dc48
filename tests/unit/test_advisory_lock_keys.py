"""Every advisory lock of the layer has a key of its own: two locks sharing a number would serialise work that
has nothing in common (label writes once waited for rule-set changes this way)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

LAYER = Path(__file__).resolve().parents[2] / "layers" / "common" / "txguard"


def _lock_keys() -> dict[int, list[str]]:
    keys: dict[int, list[str]] = defaultdict(list)
    for path in sorted(LAYER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("LOCK_KEY"):
                        keys[node.value.value].append(f"{path.relative_to(LAYER)}:{target.id}")
    return keys


def test_the_layer_has_several_advisory_locks() -> None:
    assert len(_lock_keys()) >= 5


def test_no_two_advisory_locks_share_a_key() -> None:
    shared = {hex(key): names for key, names in _lock_keys().items() if len(names) > 1}
    assert shared == {}
