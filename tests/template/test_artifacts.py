"""What each artifact `sam build` makes carries: every function ships what it runs, and development tooling
ships nowhere. Imports are tried in a process that sees only the artifacts, as Lambda's would."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
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


# ------------------------------------------------------------------------------------------- Lambda fitness --
# The functions run python3.11 on Amazon Linux 2: glibc 2.26, x86_64.
LAMBDA_GLIBC = (2, 26)
# Lambda's limit on a function plus its layers, unzipped: 250 MB (262,144,000 bytes).
LAMBDA_UNZIPPED_LIMIT = 262_144_000
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_PYTHON_TAGS = ("py3", "cp311", "py311", "py2.py3")
_ABI_TAGS = ("none", "abi3", "cp311")


def artifacts() -> list[Path]:
    """Every directory `sam build` made: the common layer's python/ and each function's code."""
    build = built()
    return sorted([build / "CommonLayer" / "python", *(p for p in build.glob("*Function") if p.is_dir())])


def function_names() -> list[str]:
    from tests.template.stack import ROOT

    template = (ROOT / "template.yaml").read_text()
    return sorted(set(re.findall(r"^  (\w+Function):\n    Type: AWS::Serverless::Function", template, re.MULTILINE)))


def runs_on_lambda(tag: str) -> bool:
    """A wheel tag (python-abi-platform) Lambda's python3.11 on x86_64 with glibc 2.26 can load."""
    python, abi, platform = tag.split("-")
    if not any(p in _PYTHON_TAGS for p in python.split(".")) or not any(a in _ABI_TAGS for a in abi.split(".")):
        return False
    for single in platform.split("."):
        if single == "any":
            return True
        legacy = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_x86_64", single)
        if legacy and _LEGACY_MANYLINUX[legacy[1]] <= LAMBDA_GLIBC:
            return True
        modern = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", single)
        if modern and (int(modern[1]), int(modern[2])) <= LAMBDA_GLIBC:
            return True
    return False


def test_the_wheel_tag_rule_accepts_old_glibc_and_refuses_new() -> None:
    assert runs_on_lambda("cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64")
    assert runs_on_lambda("py3-none-any")
    assert runs_on_lambda("cp311-abi3-manylinux_2_26_x86_64")
    assert not runs_on_lambda("cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64")
    assert not runs_on_lambda("cp311-cp311-musllinux_1_2_x86_64")
    assert not runs_on_lambda("cp311-cp311-manylinux2014_aarch64")
    assert not runs_on_lambda("cp312-cp312-manylinux2014_x86_64")


def test_every_wheel_in_every_artifact_is_pure_or_built_for_glibc_2_26_or_older() -> None:
    wheels = {}
    for artifact in artifacts():
        for metadata in artifact.glob("*.dist-info/WHEEL"):
            tags = [
                line.split(":", 1)[1].strip() for line in metadata.read_text().splitlines() if line.startswith("Tag:")
            ]
            wheels[f"{artifact.name}/{metadata.parent.name}"] = tags
    assert any("numpy" in name for name in wheels), sorted(wheels)  # the scan sees the layer's native wheels
    refused = {name: tags for name, tags in wheels.items() if not any(runs_on_lambda(tag) for tag in tags)}
    assert not refused, refused


def glibc_versions_needed(path: Path) -> set[tuple[int, int]]:
    """The GLIBC_x.y symbol versions an ELF shared object or executable requires (its .gnu.version_r)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only (x86_64)
        return set()
    (section_offset,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size) for i in range(count)]
    needed: set[tuple[int, int]] = set()
    for _, kind, _, _, offset, _, link, info, _, _ in sections:
        if kind != 0x6FFFFFFE:  # SHT_GNU_verneed
            continue
        strings = sections[link][4]
        entry = offset
        for _ in range(info):
            _, _, _, aux, following = struct.unpack_from("<HHIII", data, entry)
            auxiliary = entry + aux
            while True:
                _, _, _, name, next_aux = struct.unpack_from("<IHHII", data, auxiliary)
                end = data.index(b"\0", strings + name)
                version = re.fullmatch(rb"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", data[strings + name : end])
                if version:
                    needed.add((int(version[1]), int(version[2])))
                if not next_aux:
                    break
                auxiliary += next_aux
            if not following:
                break
            entry += following
    return needed


def test_no_native_library_in_any_artifact_needs_a_glibc_newer_than_2_26() -> None:
    scanned, too_new = 0, {}
    for artifact in artifacts():
        for path in artifact.rglob("*"):
            if path.is_file() and not path.is_symlink() and (".so" in path.suffixes or path.suffix == ".so"):
                versions = glibc_versions_needed(path)
                scanned += 1
                if versions and max(versions) > LAMBDA_GLIBC:
                    too_new[str(path.relative_to(artifact.parent))] = "GLIBC_{}.{}".format(*max(versions))
    assert scanned > 10  # numpy's, psycopg2's, pydantic-core's and orjson's libraries at least
    assert not too_new, too_new


def test_the_elf_scan_sees_what_this_hosts_programs_need() -> None:
    # This development host's glibc is newer than Lambda's, and its programs ask for its newer symbols.
    host = Path("/bin/ls").resolve()
    assert max(glibc_versions_needed(host)) > LAMBDA_GLIBC
    assert glibc_versions_needed(Path(__file__)) == set()


def tree_bytes(directory: Path) -> int:
    return sum(p.lstat().st_size for p in directory.rglob("*") if p.is_file() or p.is_symlink())


def test_each_function_with_the_layer_is_under_lambdas_250_mb_unzipped() -> None:
    build = built()
    layer = tree_bytes(build / "CommonLayer")
    sizes = {name: tree_bytes(build / name) + layer for name in function_names()}
    assert sizes and all((build / name).is_dir() for name in sizes), sorted(sizes)
    assert all(size < LAMBDA_UNZIPPED_LIMIT for size in sizes.values()), sizes


def test_the_layer_scores_a_model_with_its_own_numpy(runtime: Path) -> None:
    found = missing_imports(runtime, "IngestFunction", "numpy", "txguard.models.scoring", "lightgbm")
    assert found == {"numpy": None, "txguard.models.scoring": None, "lightgbm": "lightgbm"}


# ------------------------------------------------------------------------------------- TrainFunction --
# Amazon Linux 2's libstdc++ is GCC 7's: GLIBCXX_3.4.24 at most (glibc is checked for every artifact above).
AMAZON_LINUX_2_GLIBCXX = (3, 4, 24)


def _train_build() -> Path:
    from tests.template.stack import ROOT

    train = built() / "TrainFunction"
    source = ROOT / "functions" / "train" / "app.py"
    assert (train / "app.py").read_bytes() == source.read_bytes(), "stale build: run `make template-checks`"
    return train


def test_the_train_function_ships_lightgbm_and_its_openmp_and_nothing_the_layer_has() -> None:
    train = _train_build()
    assert (train / "lightgbm").is_dir() and (train / "lib" / "libgomp.so.1").is_file()
    # numpy is the layer's; scikit-learn is left out (the baseline is the CLI's): within 250 MB with the layer.
    assert not (train / "numpy").exists() and not (train / "sklearn").exists()
    too_new = {}
    for library in (p for p in train.rglob("*.so*") if p.is_file()):
        for version in set(re.findall(rb"GLIBCXX_([0-9]+(?:\.[0-9]+)+)", library.read_bytes())):
            if tuple(int(part) for part in version.split(b".")) > AMAZON_LINUX_2_GLIBCXX:
                too_new[str(library.relative_to(train))] = f"GLIBCXX_{version.decode()}"
    assert not too_new, too_new


def test_the_train_function_trains_from_its_artifacts_alone(runtime: Path) -> None:
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
