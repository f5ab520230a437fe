import pyarrow.fs as pafs
import pytest

from pipeline.storage import (
    StorageError,
    StorageOptions,
    arrow_filesystem,
    filesystem,
    parse_uri,
)


def test_parse_uri_forms(tmp_path):
    assert parse_uri(str(tmp_path)).protocol == "file"
    assert parse_uri(f"file://{tmp_path}").path == str(tmp_path)
    assert parse_uri("s3://bucket/a/b/").path == "bucket/a/b"
    assert parse_uri("memory://x/y").path == "/x/y"
    assert parse_uri("s3://bucket/a").join("b", "c").uri == "s3://bucket/a/b/c"
    with pytest.raises(StorageError, match="unsupported storage scheme 'gs'"):
        parse_uri("gs://bucket/x")
    with pytest.raises(StorageError, match="needs a bucket"):
        parse_uri("s3:///x")


def round_trip(uri: str, options: StorageOptions | None = None) -> None:
    """Bytes written through fsspec read back through pyarrow, and the other way round."""
    fs, path = filesystem(uri, options)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/a.bin", b"written by fsspec")
    arrow, arrow_path = arrow_filesystem(uri, options)
    assert arrow_path == path
    with arrow.open_input_stream(f"{path}/a.bin") as f:
        assert f.read() == b"written by fsspec"
    with arrow.open_output_stream(f"{path}/b.bin") as f:
        f.write(b"written by pyarrow")
    fs.invalidate_cache()
    assert fs.cat_file(f"{path}/b.bin") == b"written by pyarrow"


def test_local_round_trip(tmp_path):
    round_trip(str(tmp_path / "data"))
    round_trip(f"file://{tmp_path}/other")


def test_memory_round_trip():
    round_trip("memory://storage-test/data")


def test_s3_round_trip_with_endpoint_from_the_environment(s3_bucket):
    # Only AWS_ENDPOINT_URL names the server: pyarrow gets it from us, not from the variable.
    round_trip(f"s3://{s3_bucket}/data")
    arrow, _ = arrow_filesystem(f"s3://{s3_bucket}/data")
    assert isinstance(arrow, pafs.S3FileSystem)


def test_s3_explicit_options_win_over_the_environment(s3_bucket, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    options = StorageOptions(
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
    round_trip(f"s3://{s3_bucket}/explicit", options)


def test_secrets_do_not_show_in_reprs():
    options = StorageOptions(access_key_id="AKIDSECRET", secret_access_key="verysecret")
    assert "verysecret" not in repr(options) and "AKIDSECRET" not in str(options)
    assert "verysecret" not in options.model_dump_json()
