"""Read-only SQL over the manifest: DuckDB on one snapshot of the Iceberg table.

The snapshot's data files are read by DuckDB's own Parquet reader (objects in s3 through our
storage layer's filesystem, so endpoints and credentials apply), which reads only the columns
and row groups a query needs, a few at a time, and never a whole manifest into memory. The
manifest is exposed as `manifest`; selections (tables written by `fiqa filter`) and curation
run logs (written by `fiqa curate`) by their bare names.

Read-only twice over: a statement must be a single SELECT, and the DuckDB connection runs with
external access disabled except to the exposed snapshots' own data files, and its
configuration locked, so no query can read any other file, write one, attach databases, or
install and load extensions, whatever functions it calls. (DuckDB itself may spill
intermediate results to a private temporary folder, removed on close.)
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from pipeline.errors import FiqaError
from pipeline.maintenance import EXPIRED_BEFORE, snapshot_time
from pipeline.manifest import ARROW_SCHEMA
from pipeline.runlog import ARROW_SCHEMA as RUN_LOG_SCHEMA
from pipeline.runlog import RECORD_PROPERTY
from pipeline.selection import ARROW_SCHEMA as SELECTION_SCHEMA
from pipeline.selection import INFO_PROPERTY
from pipeline.storage import StorageOptions, fsspec_filesystem, parse_uri

MANIFEST = "manifest"
_SANDBOX = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,  # no reaching Python variables by name
    # Parquet's float min/max leave NaN out, and DuckDB takes them for the whole range: its
    # statistics propagation folds isnan(quality) to false, and filters pushed into the scan
    # skip row groups whose NaN rows they match. Filters run after the scan instead.
    "disabled_optimizers": "statistics_propagation,filter_pushdown",
}


class QueryError(FiqaError, ValueError):
    """A query that is refused (not read-only) or fails; the message says why."""


def sql_literal(value: str) -> str:
    """`value` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def snapshot_source(table: Table, snapshot_id: int | None) -> list[str] | pa.Table:
    """The URIs of one snapshot's data files (None: no snapshot yet, none), or where Iceberg's
    row-level deletes apply, the rows themselves, merged on read by pyiceberg's reader."""
    if snapshot_id is None:
        return []
    scan = table.scan(snapshot_id=snapshot_id)
    tasks = list(scan.plan_files())
    if any(task.delete_files for task in tasks):
        return scan.to_arrow()
    return [task.file.file_path for task in tasks]


def _expose(
    connection: duckdb.DuckDBPyConnection,
    name: str,
    source: list[str] | pa.Table,
    schema: pa.Schema,
) -> list[str]:
    """Make `source` the relation `name`; returns the paths DuckDB must be allowed to read."""
    if isinstance(source, pa.Table):
        connection.register(name, source.cast(schema))
        return []
    if not source:
        connection.register(name, schema.empty_table())
        return []
    paths = [parse_uri(uri).uri for uri in source]
    columns = ", ".join(sql_identifier(f.name) for f in schema)
    files = "[" + ", ".join(sql_literal(p) for p in paths) + "]"
    connection.execute(
        f"CREATE VIEW {sql_identifier(name)} AS SELECT {columns} "
        f"FROM read_parquet({files}, hive_partitioning = false)"
    )
    return paths


def resolve_snapshot(
    table: Table, snapshot_id: int | None = None, as_of: datetime.datetime | None = None
) -> int | None:
    """The snapshot to read: the given id, the one current at `as_of`, or the current one."""
    if snapshot_id is not None:
        if table.snapshot_by_id(snapshot_id) is None:
            raise missing_snapshot(table, str(snapshot_id))
        return snapshot_id
    if as_of is not None:
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=datetime.UTC)
        snapshot = table.snapshot_as_of_timestamp(int(as_of.timestamp() * 1000))
        if snapshot is None:
            raise missing_snapshot(table, f"at or before {as_of.isoformat()}")
        return snapshot.snapshot_id
    current = table.current_snapshot()
    return current.snapshot_id if current else None


def missing_snapshot(table: Table, what: str) -> QueryError:
    """The refusal of a snapshot the table does not have, saying whether `fiqa maintain`
    expired old snapshots and which is the oldest one left."""
    message = f"{'.'.join(table.name())}: no snapshot {what}"
    snapshots = table.snapshots()
    if not snapshots:
        return QueryError(message)
    oldest = min(snapshots, key=lambda s: s.timestamp_ms)
    if expired_before := table.properties.get(EXPIRED_BEFORE):
        message += f": snapshots older than {expired_before} were expired by 'fiqa maintain'"
        message += f"; the oldest one still available is {oldest.snapshot_id}"
    else:
        message += f"; the oldest snapshot is {oldest.snapshot_id}"
    return QueryError(f"{message} ({snapshot_time(oldest)})")


def tables_marked(catalog: Catalog, namespace: str, marker: str) -> list[str]:
    """Full names of the tables in `namespace` whose current snapshot has property `marker`:
    INFO_PROPERTY for the selections `fiqa filter` wrote, RECORD_PROPERTY for run logs."""
    names = []
    for identifier in catalog.list_tables(namespace):
        name = ".".join(identifier)
        snapshot = catalog.load_table(name).current_snapshot()
        if snapshot is not None and snapshot.summary.get(marker):
            names.append(name)
    return sorted(names)


@dataclass
class ManifestQuery:
    """A sandboxed DuckDB connection with the manifest snapshot (and selections) registered."""

    connection: duckdb.DuckDBPyConnection
    table: str
    snapshot_id: int | None
    relations: tuple[str, ...]
    spill: tempfile.TemporaryDirectory

    def sql(self, text: str) -> pa.Table:
        check_read_only(text)
        try:
            return self.connection.sql(text).to_arrow_table()
        except duckdb.PermissionException:
            raise QueryError(
                "the query reaches outside the exposed tables (files, databases or "
                f"extensions); only {', '.join(self.relations)} can be read"
            ) from None
        except duckdb.Error as e:
            raise QueryError(str(e)) from None

    def close(self) -> None:
        self.connection.close()
        self.spill.cleanup()

    def __enter__(self) -> ManifestQuery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_read_only(text: str) -> None:
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as e:
        raise QueryError(str(e)) from None
    if len(statements) != 1:
        raise QueryError(f"expected one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(
            f"only SELECT queries are allowed (this is a {kind.name} statement): the manifest "
            "is read-only here"
        )


def open_query(
    catalog: Catalog,
    manifest_table: str,
    *,
    selections: Iterable[str] | None = None,
    snapshot_id: int | None = None,
    as_of: datetime.datetime | None = None,
    storage: StorageOptions | None = None,
    memory_limit: str | None = None,
) -> ManifestQuery:
    """`selections`: full table names to expose as well; None exposes every selection and run
    log in the manifest's namespace. Selections are read at their current snapshot.
    `memory_limit` (e.g. "512MB"): what DuckDB's own buffers may hold before they spill to
    disk (default DuckDB's: 80% of the machine's memory)."""
    try:
        table = catalog.load_table(manifest_table)
    except NoSuchTableError:
        raise QueryError(f"no manifest table {manifest_table!r}") from None
    snapshot = resolve_snapshot(table, snapshot_id, as_of)
    run_logs: list[str] = []
    if selections is None:
        namespace = manifest_table.rpartition(".")[0]
        selections = tables_marked(catalog, namespace, INFO_PROPERTY)
        run_logs = tables_marked(catalog, namespace, RECORD_PROPERTY)
    # DuckDB's own spill files go to a private folder removed on close, not the working one.
    spill = tempfile.TemporaryDirectory(prefix="fiqa-query-")
    limit = {"memory_limit": memory_limit} if memory_limit else {}
    connection = duckdb.connect(config={**_SANDBOX, "temp_directory": spill.name, **limit})
    exposed = {MANIFEST: (snapshot_source(table, snapshot), ARROW_SCHEMA)}
    for name in selections:
        if name == manifest_table:
            continue
        try:
            selection = catalog.load_table(name)
        except NoSuchTableError:
            raise QueryError(f"no selection table {name!r}") from None
        current = selection.current_snapshot()
        exposed[name.rpartition(".")[2]] = (
            snapshot_source(selection, current and current.snapshot_id),
            SELECTION_SCHEMA,
        )
    for name in run_logs:
        log = catalog.load_table(name)
        exposed[name.rpartition(".")[2]] = (
            snapshot_source(log, log.current_snapshot().snapshot_id),
            RUN_LOG_SCHEMA,
        )
    protocols = {
        parse_uri(uri).protocol
        for source, _ in exposed.values()
        if isinstance(source, list)
        for uri in source
    }
    for protocol in protocols - {"file"}:
        connection.register_filesystem(fsspec_filesystem(protocol, storage))
    allowed = []
    for name, (source, schema) in exposed.items():
        allowed += _expose(connection, name, source, schema)
    # From here on, DuckDB reads only the exposed files and its settings cannot be changed.
    connection.execute(f"SET allowed_paths = [{', '.join(map(sql_literal, allowed))}]")
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return ManifestQuery(connection, manifest_table, snapshot, tuple(exposed), spill)
