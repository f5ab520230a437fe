"""The Iceberg catalog holding manifest tables.

Embedded default: pyiceberg's SQL catalog on a SQLite file with a local warehouse, both under
`FIQA_HOME` (default `~/.fiqa`). Any pyiceberg catalog (REST, Glue, Hive, SQL on Postgres) and
an `s3://` warehouse are configuration: `properties` go to `pyiceberg.catalog.load_catalog`
as they are, and S3 settings the properties leave out come from our StorageOptions (so the
endpoint reaches pyiceberg's pyarrow FileIO explicitly).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NamespaceAlreadyExistsError
from pyiceberg.table import Table
from sqlalchemy.exc import OperationalError

from pipeline.storage import StorageOptions

# pyiceberg retries a commit that lost a race by replaying it onto the new head. For the manifest
# and selections that is wrong: scoring must re-check which shards the winner committed, and a
# selection must be recomputed (a replayed overwrite would keep the winner's rows beside its
# own). Their tables turn the replay off, so a lost race raises CommitFailedException.
RETRIES = "commit.retry.num-retries"
NO_REBASE = {RETRIES: "0"}


def with_properties(table: Table, properties: dict[str, str]) -> Table:
    """`table` with `properties` set (tables made by older versions may lack them)."""
    if any(table.properties.get(k) != v for k, v in properties.items()):
        with contextlib.suppress(CommitFailedException):  # a concurrent run set them first
            table.transaction().set_properties(properties).commit_transaction()
        table.refresh()
    return table


def fiqa_home() -> Path:
    return Path(os.environ.get("FIQA_HOME") or Path.home() / ".fiqa").expanduser().absolute()


class CatalogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("fiqa", description="catalog name")
    properties: dict[str, str] = Field(
        {},
        description="pyiceberg catalog properties (type, uri, warehouse, ...); empty: the "
        "embedded SQLite catalog under FIQA_HOME",
    )

    def resolved(self, storage: StorageOptions | None = None) -> dict[str, str]:
        """The full property set, defaults and S3 settings filled in."""
        props = dict(self.properties)
        if "type" not in props and "uri" not in props:
            home = fiqa_home()
            home.mkdir(parents=True, exist_ok=True)
            props.update(
                type="sql",
                uri=f"sqlite:///{home / 'catalog.db'}",
                warehouse=props.get("warehouse") or (home / "warehouse").as_uri(),
            )
        if str(props.get("warehouse", "")).startswith("s3://") or props.get("type") != "sql":
            s3 = (storage or StorageOptions()).resolved()
            for key, value in (
                ("s3.endpoint", s3["endpoint_url"]),
                ("s3.region", s3["region"]),
                ("s3.access-key-id", s3["key"]),
                ("s3.secret-access-key", s3["secret"]),
                ("s3.session-token", s3["token"]),
            ):
                if value and key not in props:
                    props[key] = value
        return props


def open_catalog(
    config: CatalogConfig | None = None, storage: StorageOptions | None = None
) -> Catalog:
    config = config or CatalogConfig()
    properties = config.resolved(storage)
    try:
        return load_catalog(config.name, **properties)
    except OperationalError as e:
        # Two runs opening a new SQL catalog at once both create its tables; the one that
        # loses finds them made when it looks again.
        if "already exists" not in str(e):
            raise
        return load_catalog(config.name, **properties)


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    """Create `namespace` unless it exists. When two runs race to create it, the SQL catalog
    raises its database's integrity error for the loser rather than NamespaceAlreadyExistsError."""
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    except Exception:
        if not catalog.namespace_exists(namespace):
            raise
