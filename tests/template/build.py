"""The artifacts `sam build` makes from the template: the common layer and each function's code, as deployed.

`make template-checks` builds them; `built()` rebuilds (cached) when any source file differs from its built copy.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from tests.template.stack import ROOT

BUILD_DIR = ROOT / ".aws-sam" / "build"
# artifact (the template's logical id) -> (its ContentUri or CodeUri, where `sam build` puts that directory's files)
SOURCES = {
    "CommonLayer": (ROOT / "layers" / "common", BUILD_DIR / "CommonLayer" / "python"),
    **{
        f"{name.capitalize()}Function": (ROOT / "functions" / name, BUILD_DIR / f"{name.capitalize()}Function")
        for name in ("ingest", "detect", "generate", "migrate")
    },
}


def _is_source(path: Path) -> bool:
    # Byte code and the packaging metadata an older editable install left in the layer directory are no sources.
    return path.is_file() and not any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)


def build_is_current() -> bool:
    for source_dir, built_dir in SOURCES.values():
        for source in (p for p in source_dir.rglob("*") if _is_source(p)):
            built = built_dir / source.relative_to(source_dir)
            if not built.is_file() or built.read_bytes() != source.read_bytes():
                return False
    return True


def built() -> Path:
    """The build directory, brought up to date with `sam build --cached` when stale: by one test process at a time
    (make test runs two), the others waiting for it and finding it current."""
    BUILD_DIR.parent.mkdir(exist_ok=True)
    with (BUILD_DIR.parent / "tests-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_when_stale()
    assert build_is_current(), "sam build did not bring the artifacts up to date"
    return BUILD_DIR


def _build_when_stale() -> None:
    if not build_is_current():
        subprocess.run(
            [str(Path(sys.executable).with_name("sam")), "build", "--template", "template.yaml",
             "--build-dir", ".aws-sam/build", "--cached", "--cache-dir", ".aws-sam/cache"],
            cwd=ROOT, check=True, env={**os.environ, "SAM_CLI_TELEMETRY": "0"}, capture_output=True,
        )  # fmt: skip
