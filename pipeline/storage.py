"""Storage: the one place where a URI plus options becomes a filesystem.

Local paths, `file://`, `s3://` and `memory://` (tests) are understood. Every reader and writer
gets its fsspec filesystem here, and Ray readers that want a pyarrow filesystem get the
matching one. For S3, the endpoint, region and credentials come from `StorageOptions` or the
standard AWS variables; they are passed to both libraries explicitly because pyarrow's S3
filesystem ignores AWS_ENDPOINT_URL. `committed` writes a file whole (a temporary name, then
a move), for every writer whose files are read as complete when they exist.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from pipeline.errors import FiqaError

_LINES_PER_WRITE = 1 << 16

PROTOCOLS = ("file", "s3", "memory")


class StorageError(FiqaError, ValueError):
    """A URI that cannot be served, or an object that is not where it should be."""


class StorageOptions(BaseModel):
    """Object-storage settings; unset fields fall back to the standard AWS variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://127.0.0.1:9000")
    region: str | None = Field(None, description="S3 region")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    anonymous: bool = Field(False, description="unsigned S3 requests (public buckets)")

    def with_environment(self) -> StorageOptions:
        """These options with every unset field filled from the AWS variables, so that remote
        workers, whose environment may differ, use exactly the driver's settings."""
        s3 = self.resolved()
        return StorageOptions(
            endpoint_url=s3["endpoint_url"],
            region=s3["region"],
            access_key_id=s3["key"],
            secret_access_key=s3["secret"],
            session_token=s3["token"],
            anonymous=self.anonymous,
        )

    def resolved(self) -> dict[str, str | None]:
        def secret(value: SecretStr | None, env: str) -> str | None:
            return value.get_secret_value() if value is not None else os.environ.get(env)

        return {
            "endpoint_url": self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL"),
            "region": self.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION"),
            "key": secret(self.access_key_id, "AWS_ACCESS_KEY_ID"),
            "secret": secret(self.secret_access_key, "AWS_SECRET_ACCESS_KEY"),
            "token": secret(self.session_token, "AWS_SESSION_TOKEN"),
        }


@dataclass(frozen=True)
class Location:
    """A parsed URI: `protocol` and the `path` inside that filesystem (no scheme)."""

    protocol: str
    path: str

    @property
    def uri(self) -> str:
        return self.path if self.protocol == "file" else f"{self.protocol}://{self.path}"

    def join(self, *parts: str) -> Location:
        return Location(self.protocol, posixpath.join(self.path, *parts))


def parse_uri(uri: str) -> Location:
    parsed = urlparse(uri)
    scheme = parsed.scheme or "file"
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = "file"
    if scheme not in PROTOCOLS:
        raise StorageError(
            f"{uri}: unsupported storage scheme {scheme!r}; use one of "
            f"{', '.join(p + '://' for p in PROTOCOLS)} or a local path"
        )
    if scheme == "file":
        path = parsed.path if parsed.scheme else uri
        return Location("file", os.path.abspath(os.path.expanduser(path)))
    if scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri}: an s3 URI needs a bucket (s3://bucket/prefix)")
        return Location("s3", f"{parsed.netloc}{parsed.path}".rstrip("/"))
    return Location("memory", "/" + f"{parsed.netloc}{parsed.path}".strip("/"))


def filesystem(
    uri: str, options: StorageOptions | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for `uri`."""
    location = parse_uri(uri)
    return fsspec_filesystem(location.protocol, options), location.path


def fsspec_filesystem(
    protocol: str, options: StorageOptions | None = None
) -> fsspec.AbstractFileSystem:
    if protocol == "s3":
        s3 = (options or StorageOptions()).resolved()
        return fsspec.filesystem(
            "s3",
            key=s3["key"],
            secret=s3["secret"],
            token=s3["token"],
            anon=(options or StorageOptions()).anonymous,
            endpoint_url=s3["endpoint_url"],
            client_kwargs={"region_name": s3["region"]} if s3["region"] else {},
        )
    return fsspec.filesystem(protocol)


def arrow_filesystem(
    uri: str, options: StorageOptions | None = None
) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for `uri`, for readers that take pyarrow's."""
    location = parse_uri(uri)
    if location.protocol == "file":
        return pafs.LocalFileSystem(), location.path
    if location.protocol == "s3":
        opts = options or StorageOptions()
        s3 = opts.resolved()
        endpoint = urlparse(s3["endpoint_url"]) if s3["endpoint_url"] else None
        return pafs.S3FileSystem(
            access_key=s3["key"],
            secret_key=s3["secret"],
            session_token=s3["token"],
            anonymous=opts.anonymous,
            region=s3["region"] or "us-east-1",
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
        ), location.path
    fs = fsspec_filesystem(location.protocol, options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), location.path


def write_lines(out: BinaryIO, lines: Iterable[str]) -> None:
    """Text lines written in blocks: one write call per line costs more than formatting it."""
    lines = iter(lines)
    while block := list(itertools.islice(lines, _LINES_PER_WRITE)):
        out.write("".join(block).encode())


@contextlib.contextmanager
def committed(
    fs: fsspec.AbstractFileSystem, path: str, partial: str | None = None
) -> Iterator[BinaryIO]:
    """A file open for writing under a temporary name (`partial`, or one beside `path`), moved
    to `path` once whole: a reader never sees half a file, and a failed write leaves nothing
    under `path`."""
    partial = partial or f"{path}.{uuid.uuid4().hex[:8]}.partial"
    for parent in {posixpath.dirname(path), posixpath.dirname(partial)} - {""}:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(partial, "wb") as f:
            yield f
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(partial)
        raise
    fs.mv(partial, path)
