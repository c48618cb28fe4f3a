"""A record is a result of its run only if its settings are the run's: those of its row in manifest.parquet.

A run id is a hash of the run's settings and the manifest is the sweep's own list of runs, so a record whose
settings columns differ from its row's (edited, or copied from another run) is no result of that run, and
is not trusted. The record's columns are compared with the row's (as ``schema.flat_setting_values`` makes them): that costs
one read of the settings columns of the manifest's row groups that hold the records checked (256 runs each),
and ~15 us per record. Recomputing the run id from the record's config instead would build a ``RunConfig``
per record (~140 us: 1.4 s more for a first ``status`` of 10,000 runs), and still leave its columns unchecked.
Nothing here imports torch or pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pyarrow.parquet as pq

from .schema import DERIVED_COLUMNS, SETTING_COLUMNS, derived_values, flat_setting_values


class ManifestSettings:
    """The settings columns each run's record must hold, from the manifest's row groups, read on demand."""

    def __init__(self, open_manifest: Callable[[], pq.ParquetFile]) -> None:
        self._open = open_manifest
        self._file: pq.ParquetFile | None = None
        self._where: dict[str, tuple[int, int]] = {}  # run_id -> (row group, row in it)
        self._groups: dict[int, dict[str, list[Any]]] = {}  # row group -> {setting: values}

    def _locate(self) -> pq.ParquetFile:
        if self._file is None:
            self._file = self._open()
            ids = self._file.read(columns=["run_id"]).column("run_id").to_pylist()
            start = 0
            for group in range(self._file.num_row_groups):
                rows = self._file.metadata.row_group(group).num_rows
                self._where.update(
                    (run_id, (group, row)) for row, run_id in enumerate(ids[start : start + rows])
                )
                start += rows
        return self._file

    def prefetch(self, run_ids: Iterable[str]) -> None:
        """Read, at once, the row groups that hold these runs (checking records one by one reads them one by one)."""
        manifest = self._locate()
        groups = sorted({self._where[r][0] for r in run_ids if r in self._where} - set(self._groups))
        if not groups:
            return
        settings = [name for name in SETTING_COLUMNS if name in manifest.schema_arrow.names]
        start = 0
        table = manifest.read_row_groups(groups, columns=settings)
        for group in groups:
            rows = manifest.metadata.row_group(group).num_rows
            part = table.slice(start, rows)
            self._groups[group] = {name: part.column(name).to_pylist() for name in settings}
            start += rows

    def _row(self, run_id: str) -> _Row | None:
        """The settings of ``run_id``'s manifest row (None: the manifest has no such run)."""
        self._locate()
        if run_id not in self._where:
            return None
        group, row = self._where[run_id]
        if group not in self._groups:
            self.prefetch([run_id])
        return _Row(self._groups[group], row)

    def expected(self, run_id: str) -> dict[str, Any] | None:
        """The settings columns of ``run_id``'s manifest row (those it has the settings for), or None when the
        manifest has no such run."""
        flat = self._row(run_id)
        if flat is None:
            return None
        try:
            return flat_setting_values(flat)
        except KeyError:  # a manifest of an older plsweep, without some settings
            plain = SETTING_COLUMNS.items()
            return {c: flat[name] for name, c in plain if name in flat and c not in DERIVED_COLUMNS}

    def problem(self, record: dict[str, Any]) -> str | None:
        """Why ``record``'s settings are not its run's (None: they are). A column the record lacks (an older
        record, or a failed one that could not hold a value) is not compared, nor one the manifest lacks."""
        mismatch = self.mismatch(record)
        return f"{mismatch[0]} {mismatch[1]}"[:200] if mismatch else None

    def mismatch(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """(column, how it differs) for the first settings column of ``record`` that is not its run's (compared
        one by one, without building the row's columns: ~15 us a record)."""
        flat = self._row(record["run_id"])
        if flat is None:
            return "run_id", "is not a run of manifest.parquet"
        try:
            derived = derived_values(flat)
        except KeyError:  # a manifest of an older plsweep, without some settings: compare the rest
            derived = {}
        for setting, column in SETTING_COLUMNS.items():
            have = record.get(column)
            if have is None or (column not in derived and (column in DERIVED_COLUMNS or setting not in flat)):
                continue
            want = derived[column] if column in derived else flat[setting]
            if have != want:
                return column, f"= {have!r} is not its run's {want!r} (manifest.parquet)"
        return None


class _Row(Mapping):
    """One manifest row's settings, {"section.field": value}, looked up in its row group's columns."""

    def __init__(self, columns: dict[str, list[Any]], row: int) -> None:
        self._columns, self._row = columns, row

    def __getitem__(self, setting: str) -> Any:
        return self._columns[setting][self._row]

    def __contains__(self, setting: object) -> bool:
        return setting in self._columns

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)
