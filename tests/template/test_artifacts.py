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
from tests.template.stack import ROOT

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


# ------------------------------------------------------------------------------------ TrainFunction ----
# Lambda's python3.11 runtime is Amazon Linux 2: glibc 2.26, and the libstdc++ of GCC 7 (GLIBCXX_3.4.24).
AMAZON_LINUX_2 = {b"GLIBC": (2, 26), b"GLIBCXX": (3, 4, 24)}
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024


def _train_build() -> Path:
    build = built()
    train = build / "TrainFunction"
    source = ROOT / "functions" / "train" / "app.py"
    assert (train / "app.py").read_bytes() == source.read_bytes(), "stale build: run `make template-checks`"
    return train


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def test_the_train_function_and_its_layer_fit_lambdas_unzipped_limit() -> None:
    train = _train_build()
    total = _size(train) + _size(built() / "CommonLayer")
    assert total < LAMBDA_UNZIPPED_LIMIT, f"{total / 2**20:.0f} MB unzipped"
    # numpy is the layer's; scikit-learn is left out (the baseline is the CLI's): neither is shipped twice.
    assert not (train / "numpy").exists() and not (train / "sklearn").exists()


def test_every_native_library_of_the_train_function_loads_on_amazon_linux_2() -> None:
    import re

    train = _train_build()
    libraries = [p for p in train.rglob("*.so*") if p.is_file()]
    assert any(p.name == "lib_lightgbm.so" for p in libraries) and (train / "lib" / "libgomp.so.1").is_file()
    too_new = {}
    for library in libraries:
        for name, version in set(re.findall(rb"(GLIBC|GLIBCXX)_([0-9]+(?:\.[0-9]+)+)", library.read_bytes())):
            needed = tuple(int(part) for part in version.split(b"."))
            if needed > AMAZON_LINUX_2[name]:
                too_new[str(library.relative_to(train))] = f"{name.decode()}_{version.decode()}"
    assert not too_new, too_new
    for wheel in train.glob("*.dist-info/WHEEL"):
        tags = [line.split(": ", 1)[1] for line in wheel.read_text().splitlines() if line.startswith("Tag: ")]
        assert all(
            re.search(
                r"-(any|manylinux1_x86_64|manylinux2010_x86_64|manylinux2014_x86_64|manylinux_2_(1[0-9]|2[0-6])_x86_64)$",
                t,
            )
            for t in tags
        ), (wheel, tags)


def test_the_train_function_imports_lightgbm_from_its_artifacts_alone(runtime: Path) -> None:
    train = _train_build()
    path = [str(built() / "CommonLayer" / "python"), str(train), str(runtime)]
    script = (
        "import lightgbm, numpy, app; from txguard.models import training_job; "
        "x = numpy.arange(200.0).reshape(100, 2); y = (x[:, 0] > 100).astype(int); "
        "b = lightgbm.train({'objective': 'binary', 'verbose': -1, 'min_data_in_leaf': 5}, "
        "lightgbm.Dataset(x, y), 3); print(lightgbm.__version__, lightgbm.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", script],
        # Lambda puts /var/task/lib on LD_LIBRARY_PATH: the function's own libgomp
        env={"PYTHONPATH": ":".join(path), "LD_LIBRARY_PATH": str(train / "lib"), "AWS_DEFAULT_REGION": "us-east-1",
             "POWERTOOLS_METRICS_DISABLED": "true"},
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    version, location = done.stdout.split()
    assert version == "3.3.5" and location.startswith(str(train))
