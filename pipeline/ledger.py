"""Records of the data files a scoring run wrote, and the driver's ledger of them.

Writer tasks (`write_shard_files`) turn scored rows into one data file per shard and send
the driver a small record per file: the shard, its rows, the shard's row count when the file
holds the shard's last row (`shard_rows`, else 0), rows per status, the model loads that
scored them and the file's description. The driver's `ShardLedger` adds the records up; a
shard is complete once the rows of its files add up to its row count, and only then may it
be committed. The ledger's memory grows with shards, never with images.

No torch here: writer tasks start quickly in fresh worker processes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.manifest import DataFile

from pipeline.datafiles import FileLayout, pack, unpack, write_data_file
from pipeline.datasource import END_FIELD
from pipeline.manifest import ARROW_SCHEMA
from pipeline.storage import StorageOptions

# Column the scorers add to their rows: which model load scored the row.
SCORER = "scorer"
RECORD_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("rows", pa.int64()),
        (END_FIELD.name, pa.int64()),
        ("statuses", pa.string()),  # JSON: rows per status
        ("scorers", pa.string()),  # JSON: the model loads that scored these rows
        ("data_file", pa.binary()),  # the file's Iceberg description, packed
    ]
)


def write_shard_files(
    batch: pa.Table, layout: FileLayout, storage: StorageOptions | None, prefix: str
) -> pa.Table:
    """Ray Data UDF: scored rows -> one data file per shard in the batch -> one record each."""
    records = []
    for shard in pc.unique(batch["shard"]).to_pylist():
        rows = batch.filter(pc.equal(batch["shard"], shard))
        data_file = write_data_file(rows.select(ARROW_SCHEMA.names), layout, storage, prefix)
        records.append(
            {
                "shard": shard,
                "rows": rows.num_rows,
                END_FIELD.name: pc.max(rows[END_FIELD.name]).as_py(),
                "statuses": json.dumps(Counter(rows["status"].to_pylist())),
                "scorers": json.dumps(pc.unique(rows[SCORER]).to_pylist()),
                "data_file": pack(data_file),
            }
        )
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


class LedgerError(RuntimeError):
    """Writers reported more rows for a shard than it has: rows would be duplicated."""


@dataclass
class ShardProgress:
    key: str
    rows: int = 0
    total: int | None = None  # known once the file with the shard's last row is reported
    files: list[DataFile] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        return self.total is not None and self.rows == self.total


class ShardLedger:
    def __init__(self) -> None:
        self.shards: dict[str, ShardProgress] = {}  # in flight
        self.ready: list[ShardProgress] = []  # complete, not yet committed
        self.completed: set[str] = set()
        self.completed_rows = 0
        self.model_loads: set[str] = set()

    def add_records(self, records: pa.Table) -> int:
        """Add a batch of writer records; returns the rows they report."""
        rows = 0
        for record in records.to_pylist():
            self.add(
                record["shard"],
                record["rows"],
                record[END_FIELD.name],
                json.loads(record["statuses"]),
                unpack(record["data_file"]),
            )
            self.model_loads.update(json.loads(record["scorers"]))
            rows += record["rows"]
        return rows

    def add(
        self, shard: str, rows: int, shard_rows: int, statuses: dict[str, int], data_file: DataFile
    ) -> None:
        if shard in self.completed:
            raise LedgerError(f"{shard}: rows written after the shard was complete")
        progress = self.shards.setdefault(shard, ShardProgress(shard))
        progress.rows += rows
        progress.files.append(data_file)
        progress.statuses.update(statuses)
        if shard_rows:
            progress.total = shard_rows
        if progress.total is not None and progress.rows > progress.total:
            raise LedgerError(
                f"{shard}: {progress.rows} rows written for a shard of {progress.total}"
            )
        if progress.complete:
            self.ready.append(self.shards.pop(shard))
            self.completed.add(shard)
            self.completed_rows += progress.rows

    def take_ready(self) -> list[ShardProgress]:
        ready, self.ready = self.ready, []
        return ready
