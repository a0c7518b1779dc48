"""Where model artifacts live: content-addressed bytes, `models/<sha256>.json`, in S3 or in a local directory.

The registry (storage.models) holds each model's sha256; its bytes are stored once under that name and never
change, so any reader can tell a damaged or substituted file: `get` hashes what it read and refuses a mismatch.

Which store: TXGUARD_MODEL_BUCKET (an S3 bucket, the deployed stack's ModelBucket) or else TXGUARD_MODEL_DIR (a
directory; `txguard local` and the CLI default to `.txguard/models` under the working directory). With neither
set, every call raises ArtifactUnavailable. boto3 is imported only when S3 is used (it costs ~120 ms).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from txguard.errors import Unavailable

PREFIX = "models/"
MAX_ARTIFACT_BYTES = 200 * 1024 * 1024  # a model of thousands of trees is tens of MB; more is refused
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 10.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactUnavailable(Unavailable):
    """The artifact cannot be read or written: no store configured, not found, unreadable, too large, or its
    bytes do not hash to the name they are stored under. The message says which."""

    code = "artifact_unavailable"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(sha256: str) -> str:
    """The artifact's name in a store: `models/<sha256>.json`. Raises ArtifactUnavailable on a malformed hash."""
    if not _SHA256.match(sha256):
        raise ArtifactUnavailable(f"{sha256[:80]!r} is not a sha256 (64 lower-case hexadecimal digits)")
    return f"{PREFIX}{sha256}.json"


def _verified(sha256: str, data: bytes, where: str) -> bytes:
    actual = _sha256(data)
    if actual != sha256:
        raise ArtifactUnavailable(f"the artifact {where} is damaged: its bytes hash to {actual}, not {sha256}")
    return data


class ArtifactStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store the bytes under their sha256 (once; storing them again changes nothing) and return it."""
        ...

    def get(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`, verified against it. Raises ArtifactUnavailable."""
        ...


class DirectoryStore:
    """Artifacts as files `<directory>/models/<sha256>.json`, each written whole (a temporary file renamed)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.directory)!r})"

    def put(self, data: bytes) -> str:
        sha256 = _sha256(data)
        path = self.directory / key(sha256)
        if path.is_file() and path.stat().st_size == len(data):
            return sha256
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(file.name, path)
        except OSError as exc:
            raise ArtifactUnavailable(f"cannot write the artifact to {path}: {exc.strerror or exc}") from None
        return sha256

    def get(self, sha256: str) -> bytes:
        path = self.directory / key(sha256)
        try:
            size = path.stat().st_size
            if size > MAX_ARTIFACT_BYTES:
                raise ArtifactUnavailable(f"the artifact {path} is {size} bytes, more than {MAX_ARTIFACT_BYTES}")
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactUnavailable(f"the artifact {sha256} is not in {self.directory}") from None
        except OSError as exc:
            raise ArtifactUnavailable(f"cannot read the artifact {path}: {exc.strerror or exc}") from None
        return _verified(sha256, data, str(path))


class S3Store:
    """Artifacts as objects `s3://<bucket>/models/<sha256>.json` (the bucket encrypts and versions them).

    The client waits at most CONNECT_TIMEOUT_S + READ_TIMEOUT_S per attempt, three attempts."""

    def __init__(self, bucket: str, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                config=Config(
                    connect_timeout=CONNECT_TIMEOUT_S,
                    read_timeout=READ_TIMEOUT_S,
                    retries={"total_max_attempts": 3, "mode": "standard"},
                ),
            )
        return self._client

    def put(self, data: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        sha256 = _sha256(data)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key(sha256),
                Body=data,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",  # S3 refuses bytes damaged on the way
            )
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactUnavailable(f"cannot write the artifact to s3://{self.bucket}/{key(sha256)}: {exc}") from None
        return sha256

    def get(self, sha256: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.bucket}/{key(sha256)}"
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key(sha256))
            size = int(answer.get("ContentLength") or 0)
            if size > MAX_ARTIFACT_BYTES:
                answer["Body"].close()
                raise ArtifactUnavailable(f"the artifact {where} is {size} bytes, more than {MAX_ARTIFACT_BYTES}")
            data = answer["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactUnavailable(f"the artifact {where} does not exist") from None
            raise ArtifactUnavailable(f"cannot read the artifact {where}: {exc}") from None
        except BotoCoreError as exc:
            raise ArtifactUnavailable(f"cannot read the artifact {where}: {exc}") from None
        return _verified(sha256, data, where)


class Unconfigured:
    """No store: every call says how to configure one."""

    def put(self, data: bytes) -> str:
        raise ArtifactUnavailable(self._message())

    def get(self, sha256: str) -> bytes:
        raise ArtifactUnavailable(self._message())

    @staticmethod
    def _message() -> str:
        return "no model artifact store is configured: set TXGUARD_MODEL_BUCKET (S3) or TXGUARD_MODEL_DIR (a directory)"


def from_env(default_dir: str | os.PathLike[str] | None = None) -> ArtifactStore:
    """The store the environment names: TXGUARD_MODEL_BUCKET, else TXGUARD_MODEL_DIR, else `default_dir`, else
    Unconfigured."""
    bucket = os.environ.get("TXGUARD_MODEL_BUCKET")
    if bucket:
        return S3Store(bucket)
    directory = os.environ.get("TXGUARD_MODEL_DIR") or default_dir
    return DirectoryStore(directory) if directory else Unconfigured()


_store: ArtifactStore | None = None
_store_config: tuple[str | None, str | None] | None = None
_store_lock = threading.Lock()


def store() -> ArtifactStore:
    """The environment's store, made once per configuration (its S3 client is reused across invocations)."""
    global _store, _store_config
    config = (os.environ.get("TXGUARD_MODEL_BUCKET"), os.environ.get("TXGUARD_MODEL_DIR"))
    with _store_lock:
        if _store is None or _store_config != config:
            _store, _store_config = from_env(), config
        return _store


def put(data: bytes) -> str:
    """Store `data` in the environment's store under its sha256 and return it. Raises ArtifactUnavailable."""
    return store().put(data)


def get(sha256: str) -> bytes:
    """The bytes stored under `sha256` in the environment's store, verified. Raises ArtifactUnavailable."""
    return store().get(sha256)
