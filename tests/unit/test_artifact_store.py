"""Model artifacts, content-addressed in a directory or in S3 (moto): what is read back is what was written, or
ArtifactUnavailable saying why."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from txguard.models import artifact_store
from txguard.models.artifact_store import ArtifactUnavailable, DirectoryStore, S3Store, Unconfigured

DATA = b'{"format":"txguard-lightgbm-1","model":{}}'
SHA = hashlib.sha256(DATA).hexdigest()


def test_a_directory_store_reads_back_what_it_wrote_under_its_sha256(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    assert store.put(DATA) == SHA
    assert (tmp_path / "models" / f"{SHA}.json").read_bytes() == DATA
    assert store.put(DATA) == SHA  # stored once: writing again changes nothing
    assert store.get(SHA) == DATA
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f"{SHA}.json"]  # no temporary file left


def test_a_directory_store_refuses_a_missing_damaged_or_misnamed_artifact(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    with pytest.raises(ArtifactUnavailable, match="not in"):
        store.get(SHA)
    store.put(DATA)
    (tmp_path / "models" / f"{SHA}.json").write_bytes(DATA.replace(b"1", b"2"))
    with pytest.raises(ArtifactUnavailable, match="damaged"):
        store.get(SHA)
    with pytest.raises(ArtifactUnavailable, match="is not a sha256"):
        store.get("../../etc/passwd")


def test_a_directory_store_that_cannot_write_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ArtifactUnavailable, match="cannot write"):
        DirectoryStore(blocker).put(DATA)


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models-bucket")
        yield client


def test_an_s3_store_reads_back_what_it_wrote_and_refuses_a_tampered_object(bucket: Any) -> None:
    store = S3Store("models-bucket")
    assert store.put(DATA) == SHA
    assert bucket.get_object(Bucket="models-bucket", Key=f"models/{SHA}.json")["Body"].read() == DATA
    assert store.get(SHA) == DATA
    bucket.put_object(Bucket="models-bucket", Key=f"models/{SHA}.json", Body=b"{}")
    with pytest.raises(ArtifactUnavailable, match="damaged"):
        store.get(SHA)


def test_an_s3_store_says_when_the_artifact_or_the_bucket_is_missing(bucket: Any) -> None:
    with pytest.raises(ArtifactUnavailable, match="does not exist"):
        S3Store("models-bucket").get(SHA)
    with pytest.raises(ArtifactUnavailable, match="cannot"):
        S3Store("no-such-bucket").get(SHA)
    with pytest.raises(ArtifactUnavailable, match="cannot write"):
        S3Store("no-such-bucket").put(DATA)


def test_the_environment_chooses_the_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bucket: Any) -> None:
    monkeypatch.delenv("TXGUARD_MODEL_BUCKET", raising=False)
    monkeypatch.delenv("TXGUARD_MODEL_DIR", raising=False)
    assert isinstance(artifact_store.from_env(), Unconfigured)
    with pytest.raises(ArtifactUnavailable, match="TXGUARD_MODEL_BUCKET"):
        artifact_store.get(SHA)
    assert isinstance(artifact_store.from_env(default_dir=tmp_path), DirectoryStore)
    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path))
    assert artifact_store.put(DATA) == SHA
    assert artifact_store.get(SHA) == DATA
    monkeypatch.setenv("TXGUARD_MODEL_BUCKET", "models-bucket")  # the bucket wins over the directory
    with pytest.raises(ArtifactUnavailable, match="does not exist"):
        artifact_store.get(SHA)
    artifact_store.put(DATA)
    assert artifact_store.get(SHA) == DATA


def test_in_process_ingest_commands_read_models_where_train_wrote_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from txguard_dev.commands.common import model_store, use_local_model_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TXGUARD_MODEL_BUCKET", raising=False)
    monkeypatch.delenv("TXGUARD_MODEL_DIR", raising=False)
    written = model_store().put(DATA)  # what `txguard train` does with no store configured
    with pytest.raises(ArtifactUnavailable):
        artifact_store.get(written)  # what serving in the same process would read, unconfigured
    use_local_model_store()  # replay and generate --direct
    assert artifact_store.get(written) == DATA
    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path / "elsewhere"))
    use_local_model_store()  # a configured store is left alone
    assert os.environ["TXGUARD_MODEL_DIR"] == str(tmp_path / "elsewhere")
