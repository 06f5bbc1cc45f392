"""Whether a Parquet input already holds every id in one chunk, told from its footers alone.

A fleet export is often written machine by machine: each row group holds whole machines,
and two row groups share no machine. The row groups' id statistics (min, max) then show,
without reading any data, that the id ranges do not overlap. In that case a job can read
and forecast each chunk on its own: no id has rows anywhere else, so the hash shuffle
(write every row to scratch, read it back by bucket) would only move rows around.

:func:`whole_id_chunks` regroups such an input into chunks whose id ranges are pairwise
disjoint. It answers None, and the job shuffles, whenever the footers cannot prove it: a
CSV input, a row group without statistics, or two id ranges that overlap (rows in time
order, or shuffled). It never reads data, so a wrong None costs the shuffle, never a
wrong result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .partitions import Chunk

__all__ = ["MERGE_LIMIT", "whole_id_chunks"]

MERGE_LIMIT = 4
"""Row groups whose id ranges overlap are merged into one chunk while it holds at most this
many times ``rows_per_chunk`` rows; a larger merge means the input is not laid out by id."""


@dataclasses.dataclass
class _Group:
    """Row groups of one file taken together: their rows and the range of their ids."""

    path: str
    row_groups: list[int]
    rows: int
    lo: Any
    hi: Any

    def overlaps(self, lo: Any, hi: Any) -> bool:
        return not (hi < self.lo or lo > self.hi)


def _id_kind(schema: Any, id_col: str) -> str | None:
    """``"str"`` or ``"int"``: the id column's type family, whose statistics compare like the ids."""
    import pyarrow as pa

    if id_col not in schema.names:
        return None
    kind = schema.field(id_col).type
    kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "str"
    if pa.types.is_integer(kind):
        return "int"
    return None  # floats, binary...: leave them to the shuffle


def _file_groups(path: str, rows_per_chunk: int, id_col: str) -> tuple[str | None, list[_Group]] | None:
    """One file's row groups, grouped up to ``rows_per_chunk`` rows, never cut inside an overlap."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception:  # plan_chunks has read this footer already; let the shuffle report it
        return None
    kind = _id_kind(pf.schema_arrow, id_col)
    meta = pf.metadata
    if kind is None or id_col not in meta.schema.names:
        return None
    j = meta.schema.names.index(id_col)
    groups: list[_Group] = []
    cur: _Group | None = None
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        if rg.num_rows == 0:
            continue
        stats = rg.column(j).statistics
        if stats is None or not stats.has_min_max or (stats.has_null_count and stats.null_count):
            return None  # a missing id fails validation; the shuffle's read reports it with the file
        lo, hi = stats.min, stats.max
        # An overlap with the chunk so far (typically one machine cut at a row-group boundary)
        # keeps the group in the chunk: an id is never split between two chunks.
        if cur is not None and (cur.rows < rows_per_chunk or cur.overlaps(lo, hi)):
            cur.row_groups.append(g)
            cur.rows += rg.num_rows
            cur.lo, cur.hi = min(cur.lo, lo), max(cur.hi, hi)
            if len(cur.row_groups) > 1 and cur.rows > MERGE_LIMIT * rows_per_chunk:
                return None
            continue
        cur = _Group(path, [g], rg.num_rows, lo, hi)
        groups.append(cur)
    return kind, groups


def whole_id_chunks(chunks: Sequence[Chunk], *, rows_per_chunk: int, id_col: str = "id") -> list[Chunk] | None:
    """The Parquet files of ``chunks`` cut again into chunks that share no id, or None.

    Row groups are grouped up to ``rows_per_chunk`` rows, as :func:`plan_chunks` does, except
    that a group whose id range overlaps the chunk's so far joins it. The result holds only if
    all the chunks' id ranges, over all files, are then pairwise disjoint.

    Args:
        chunks: the input's chunks from :func:`~atomic_usage.cluster.partitions.plan_chunks`.
        rows_per_chunk: rows per chunk to aim for.
        id_col: the id column's name.

    Returns:
        Chunks in file order, each holding all the rows of its ids; None when the footers
        cannot show that (any CSV or source chunk, missing statistics, ids of different
        types across files, overlapping ranges, or a merge beyond ``MERGE_LIMIT``).
    """
    if not chunks or any(c.kind != "parquet" or c.source != chunks[0].source for c in chunks):
        return None
    paths = list(dict.fromkeys(c.path for c in chunks))
    kinds: set[str | None] = set()
    groups: list[_Group] = []
    for path in paths:
        found = _file_groups(path, max(rows_per_chunk, 1), id_col)
        if found is None:
            return None
        kind, file_groups = found
        if not file_groups:
            return None  # an empty file: the shuffle's read still validates its columns
        kinds.add(kind)
        groups.extend(file_groups)
    if len(kinds) > 1:
        return None  # an int id 7 in one file and a str id "7" in another are the same machine
    by_lo = sorted(groups, key=lambda g: g.lo)
    if any(b.lo <= a.hi for a, b in zip(by_lo, by_lo[1:], strict=False)):
        return None
    source = chunks[0].source
    return [Chunk(g.path, "parquet", tuple(g.row_groups), source=source, est_rows=g.rows) for g in groups]
