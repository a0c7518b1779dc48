"""What each artifact `sam build` makes carries: every function ships what it runs, and development tooling
ships nowhere. Imports are tried in a process that sees only the artifacts, as Lambda's would."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.template.build import built

# Runs with -S (no site-packages, so not the development install) and only the given directories on the path.
_TRY_IMPORTS = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        found[name] = None
    except ModuleNotFoundError as missing:
        found[name] = missing.name
print(json.dumps(found))
"""
DEVELOPMENT_ONLY = ("txguard_dev", "txguard_dev.cli", "txguard_dev.local.runner", "txguard_dev.commands.db")
# What Lambda's python3.11 runtime itself provides besides the standard library.
RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only the runtime's own modules (links to this environment's copies)."""
    directory = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (directory / source.name).symlink_to(source)
    return directory


def missing_imports(runtime: Path, function: str, *modules: str) -> dict[str, str | None]:
    """Each module -> None when it imports, else the name of the module that could not be found."""
    build = built()
    path = [str(build / "CommonLayer" / "python"), str(build / function), str(runtime)]
    done = subprocess.run(
        [sys.executable, "-S", "-c", _TRY_IMPORTS, *modules],
        env={"PYTHONPATH": ":".join(path), "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_METRICS_DISABLED": "true"},
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_the_common_layer_carries_neither_development_tooling_nor_the_generator() -> None:
    layer = built() / "CommonLayer" / "python"
    assert (layer / "txguard" / "ingest.py").is_file()
    carried = {path.name for path in (layer / "txguard").iterdir()}
    assert not carried & {"local", "commands", "cli.py", "generator"}, carried
    assert not (layer / "txguard_dev").exists() and not (layer / "txguard_generator").exists()


@pytest.mark.parametrize("function", ["IngestFunction", "DetectFunction", "MigrateFunction"])
def test_a_function_other_than_generate_runs_its_handler_without_the_generator(runtime: Path, function: str) -> None:
    found = missing_imports(runtime, function, "app", "txguard_generator", *DEVELOPMENT_ONLY)
    assert found == {
        "app": None,
        "txguard_generator": "txguard_generator",
        **{module: "txguard_dev" for module in DEVELOPMENT_ONLY},
    }


def test_the_generate_function_carries_the_generator_and_no_development_tooling(runtime: Path) -> None:
    found = missing_imports(runtime, "GenerateFunction", "app", "txguard_generator.scheduled", *DEVELOPMENT_ONLY)
    assert found == {
        "app": None,
        "txguard_generator.scheduled": None,
        **{module: "txguard_dev" for module in DEVELOPMENT_ONLY},
    }
