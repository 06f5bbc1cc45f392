"""Input chunks read by the workers themselves, and the shuffle that makes every id whole in one bucket.

A job runs in two passes, both on the workers:

1. **split**: each task reads one :class:`Chunk` (a Parquet row-group range, a CSV byte
   range, or a whole source folder), validates it, and writes its rows to
   ``scratch/s{source}/b{bucket}/c{chunk}.arrow`` where ``bucket = hash(id) % n_buckets``.
   A piece is an Arrow IPC file (lz4): it is written once and read once, so it skips
   Parquet's encoding, which cost most of the split at many buckets.
2. **per bucket** (forecast or training set): a task reads every piece of one bucket,
   in chunk order, so the rows of each id come in their original order.

Every file is written to a unique temporary name and renamed to a name fixed by its
inputs, so a task that Dask re-runs after a worker died overwrites its own output
with the same bytes instead of adding a second copy. Paths must be visible to the
client and to every worker under the same name (a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import SchemaError

if TYPE_CHECKING:
    from ..data.issues import InputWarning, SeriesIssue
    from ..data.validation import RangePolicy

__all__ = [
    "CSV_BLOCK_BYTES",
    "PIECE_COMPRESSION",
    "Chunk",
    "LinesAreNotRows",
    "bucket_dir",
    "bucket_of",
    "columns_with_numbers",
    "empty_split",
    "estimate_rows",
    "header_columns",
    "lines_are_rows",
    "plan_chunks",
    "read_bucket",
    "read_chunk",
    "read_header",
    "split_chunk",
    "text_columns",
    "write_parquet_atomic",
    "write_pieces",
]

CSV_BLOCK_BYTES = 64 * 2**20
"""Bytes of an uncompressed CSV file read by one split task (lines are never cut)."""

PIECE_COMPRESSION = "lz4"
"""Codec of the scratch pieces (Arrow IPC). Against Parquet pieces, at 100,000 machines and 29 or 288
buckets: lz4 took 54-70 % less CPU to write and 30-45 % less to read, on up to 32 % more disk; zstd
took 32-35 % less to write and 10-32 % less to read, on 4-35 % less disk. CPU limits jobs here."""

_CSV_ROW_BYTES_GUESS = 50
"""Bytes per row assumed when sizing buckets from a CSV file's size (``vm-1,2026-...Z,12.3,45.6,7.8``)."""

_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv", ".gz", ".bz2", ".zst", ".xz")


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One unit of input read by one split task.

    Attributes:
        path: the file (or, for ``kind="source"``, the GCD/NAB folder).
        kind: ``"parquet"``, ``"csv"`` or ``"source"`` (a folder read whole by
            :func:`~atomic_usage.data.trainset.read_source`).
        row_groups: for Parquet, the row groups to read.
        byte_range: for CSV, ``(start, end)``: the lines that begin in it (None: the whole file).
        source: which ``--data`` source the chunk belongs to (0 for a forecast input).
        est_rows: rows in the chunk: exact for Parquet, estimated from the size for CSV.
    """

    path: str
    kind: str
    row_groups: tuple[int, ...] = ()
    byte_range: tuple[int, int] | None = None
    source: int = 0
    est_rows: int = 0


def _input_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not p.name.startswith((".", "_"))
            and p.name.lower().endswith(_PARQUET_SUFFIXES + _CSV_SUFFIXES)
        )
        if not files:
            raise SchemaError(
                f"{path}: the folder holds no .parquet or .csv partition files; "
                "give a wide CSV/Parquet file or a folder of them.",
                path=str(path),
            )
        return files
    if not path.is_file():
        raise SchemaError(f"{path}: the file does not exist or is not a file; check the path.", path=str(path))
    return [path]


def plan_chunks(
    paths: Sequence[str | Path],
    *,
    rows_per_chunk: int = 2_000_000,
    csv_block_bytes: int = CSV_BLOCK_BYTES,
    sources: bool = False,
) -> list[Chunk]:
    """Cuts the inputs into chunks without reading their data (Parquet footers only).

    Args:
        paths: wide CSV/Parquet files, or folders of them (read recursively, in name order).
        rows_per_chunk: Parquet row groups are grouped up to about this many rows per chunk.
        csv_block_bytes: uncompressed CSV files are cut into byte ranges of this size.
        sources: each path is a ``dataset build`` source: a folder without CSV/Parquet
            partition files (a GCD or NAB folder) becomes one ``"source"`` chunk, and the
            chunks of the k-th path have ``source=k`` (each source has its own buckets and
            options). Otherwise the paths are one input, as a folder of them is: every chunk
            has ``source=0``, so an id is hashed to one bucket whichever file holds its rows.

    Returns:
        The chunks, in input order.

    Raises:
        SchemaError: a path does not exist, or a Parquet file's footer cannot be read
            (the message names the file).
    """
    import pyarrow.parquet as pq

    chunks: list[Chunk] = []
    for n, raw in enumerate(paths):
        # A forecast's files are one fleet: numbered apart, their buckets (and parts) would hold
        # the same bucket numbers twice, and an id in two files would be forecast in two halves.
        k = n if sources else 0
        path = Path(raw)
        if sources and path.is_dir() and (any(path.glob("vm_*")) or _is_nab_dir(path)):
            chunks.append(Chunk(str(path.resolve()), "source", source=k))
            continue
        for f in _input_files(path):
            name = str(f.resolve())
            if f.name.lower().endswith(_PARQUET_SUFFIXES):
                try:
                    meta = pq.ParquetFile(f).metadata
                except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
                    raise SchemaError(
                        f"{f}: cannot be read as Parquet ({type(exc).__name__}: {str(exc)[:200]}); "
                        "replace or remove this partition file.",
                        path=str(f),
                    ) from None
                group: list[int] = []
                rows = 0
                for g in range(meta.num_row_groups):
                    group.append(g)
                    rows += meta.row_group(g).num_rows
                    if rows >= rows_per_chunk:
                        chunks.append(Chunk(name, "parquet", tuple(group), source=k, est_rows=rows))
                        group, rows = [], 0
                if group or meta.num_row_groups == 0:
                    chunks.append(Chunk(name, "parquet", tuple(group), source=k, est_rows=rows))
            elif f.suffix.lower() == ".csv":
                size = f.stat().st_size
                for a in range(0, max(size, 1), csv_block_bytes):
                    end = min(size, a + csv_block_bytes)
                    chunks.append(
                        Chunk(
                            name,
                            "csv",
                            byte_range=(a, end),
                            source=k,
                            est_rows=(end - a) // _CSV_ROW_BYTES_GUESS,
                        )
                    )
            else:  # compressed CSV: no byte ranges
                est = 4 * f.stat().st_size // _CSV_ROW_BYTES_GUESS
                chunks.append(Chunk(name, "csv", source=k, est_rows=est))
    return chunks


def estimate_rows(path: str | Path) -> int:
    """Rows of one wide file, without reading its data: exact for Parquet (the footer), guessed
    from the size for CSV (four times the size for a compressed one). 0 for a Parquet file whose
    footer cannot be read (the reader then reports it)."""
    p = Path(path)
    if p.name.lower().endswith(_PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(p).metadata.num_rows)
        except Exception:  # pyarrow raises ArrowInvalid, OSError...; the reader names the file
            return 0
    size = p.stat().st_size if p.is_file() else 0
    return (size if p.suffix.lower() == ".csv" else 4 * size) // _CSV_ROW_BYTES_GUESS


def _is_nab_dir(path: Path) -> bool:
    first = next(iter(sorted(path.glob("*.csv"))), None)
    if first is None:
        return False
    with open(first, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip().split(",")
    return "value" in header and "id" not in header


def _read_csv_range(path: str, start: int, end: int) -> bytes:
    """The header line plus every line that begins in ``[start, end)``."""
    with open(path, "rb") as fh:
        header = fh.readline()
        if start < len(header):
            start = len(header)
        else:
            fh.seek(start - 1)
            fh.readline()  # finish the line that began before start; it belongs to the previous range
        pos = fh.tell()
        data = fh.read(max(0, end - pos)) if pos < end else b""
        if data and not data.endswith(b"\n"):
            data += fh.readline()
    return header + data


class LinesAreNotRows(Exception):
    """A CSV byte range holds a quoted cell that spans lines: the file cannot be cut by lines."""


def lines_are_rows(raw: bytes) -> bool:
    """Whether every line of CSV text ends outside a quoted cell, so its lines are its rows.

    A cell may hold a line break inside quotes (a multi-line note); a line that ends inside one
    holds an odd number of ``"`` (an escaped ``""`` counts two), so every line holding an even
    number is the sign that no cell spans lines.

    >>> lines_are_rows(b'id,note\\na,"x, y"\\n'), lines_are_rows(b'id,note\\na,"x\\ny"\\n')
    (True, False)
    """
    if b'"' not in raw:
        return True
    a = np.frombuffer(raw, np.uint8)
    quotes = np.cumsum(a == ord('"'))
    ends = np.flatnonzero(a == ord("\n"))
    return bool((quotes[ends] % 2 == 0).all() and quotes[-1] % 2 == 0)


def _csv_rows_before(path: str, start: int) -> int:
    """The data rows of a CSV file on the lines that begin before byte ``start`` (the first line
    of a range from :func:`_read_csv_range`), blank lines skipped as pandas skips them."""
    rows = 0
    with open(path, "rb") as fh:
        pos = len(fh.readline())
        for line in fh:
            if pos >= start:
                break
            pos += len(line)
            rows += bool(line.strip(b"\r\n"))
    return rows


def _file_rows(meta: Any, row_groups: Sequence[int]) -> pd.Index:
    """The 0-based rows, in the whole Parquet file, of the rows of ``row_groups`` (from the footer)."""
    sizes = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], np.int64)
    starts = np.cumsum(sizes) - sizes
    parts = [np.arange(starts[g], starts[g] + sizes[g]) for g in row_groups]
    return pd.Index(np.concatenate(parts) if parts else np.zeros(0, np.int64))


def read_chunk(
    chunk: Chunk,
    *,
    id_col: str = "id",
    time_col: str = "timestamp",
    out_of_range: RangePolicy = "clip",
    issues: list[SeriesIssue] | None = None,
    warnings: list[InputWarning] | None = None,
    numeric_columns: Collection[str] = (),
) -> pd.DataFrame:
    """Reads and validates one chunk into the wide frame (see :mod:`atomic_usage.data.readers`).

    Args:
        chunk: the chunk.
        id_col: the id column's name.
        time_col: the timestamp column's name.
        out_of_range: the range policy (``"reject"`` for a forecast, as ``read_wide`` has it).
        issues: when given, a series with a bad value (not a number, or out of range as
            ``out_of_range`` says) is masked and reported here, its file named, instead of
            failing the chunk. The issues of a CSV byte range count rows from the range's first
            line: the caller places them (:func:`~atomic_usage.data.issues.place_issue` with
            the rows of the file before the range, as :func:`~atomic_usage.cluster.shuffle.run_split` does).
        warnings: when given, the warnings that reject nothing are kept here, and nothing is
            logged (see :func:`~atomic_usage.data.validation.validate_wide`).
        numeric_columns: columns another chunk of the same file holds numbers in: metrics here
            too, even if this chunk holds only text in them (see :func:`text_columns`).

    Raises:
        SchemaError: the chunk cannot be read or does not hold valid wide data (or, without
            ``issues``, holds a bad value); the message names the file, and a row by its line
            in the file even for a byte range (the rows before it are then counted).
        LinesAreNotRows: a byte range holds a quoted cell that spans lines (the file must be
            read whole: see :func:`lines_are_rows`).
    """
    from ..data.issues import place_issue
    from ..data.trainset import read_source
    from ..data.validation import validate_wide

    if chunk.kind == "source":
        return read_source(chunk.path)
    try:
        if chunk.kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(chunk.path)
            df = pf.read_row_groups(list(chunk.row_groups)).to_pandas()
            # Messages name rows of the file, not of the chunk (a stored pandas index is not a row).
            df.index = _file_rows(pf.metadata, chunk.row_groups)
        elif chunk.byte_range is not None:
            raw = _read_csv_range(chunk.path, *chunk.byte_range)
            if not lines_are_rows(raw):
                raise LinesAreNotRows(chunk.path)
            df = pd.read_csv(io.BytesIO(raw), dtype={id_col: str})
        else:
            df = pd.read_csv(chunk.path, dtype={id_col: str})
    except LinesAreNotRows:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        kind = "Parquet" if chunk.kind == "parquet" else "CSV"
        raise SchemaError(
            f"{chunk.path}: cannot be read as {kind} ({type(exc).__name__}: {str(exc)[:200]}); "
            "give CSV or Parquet files with columns id,timestamp,<metric>...",
            path=chunk.path,
        ) from None
    except Exception as exc:  # pyarrow's ArrowInvalid and friends are not all ValueErrors
        raise SchemaError(
            f"{chunk.path}: cannot be read ({type(exc).__name__}: {str(exc)[:200]}); replace or remove this file.",
            path=chunk.path,
        ) from None
    found: list[SeriesIssue] | None = [] if issues is not None else None
    check = functools.partial(
        validate_wide,
        id_col=id_col,
        time_col=time_col,
        path=chunk.path,
        out_of_range=out_of_range,
        numeric_columns=numeric_columns,
    )
    refused: SchemaError | None = None
    try:
        out = check(df, issues=found, row_numbers=chunk.byte_range is None, warnings=warnings)
    except SchemaError as exc:
        if chunk.byte_range is None:
            raise
        refused = exc
    if refused is not None and chunk.byte_range is not None:
        # A byte range does not know its first row until the rows before it are counted, which
        # costs a read of the file up to it: only on this failure path, so the error can name the
        # file's line (a row without id; without ``issues``, a bad cell) and not the range's row.
        first = _csv_rows_before(chunk.path, chunk.byte_range[0])
        df.index = pd.RangeIndex(first, first + len(df))
        check(df, issues=None if issues is None else [], row_numbers=True, warnings=[])
        raise refused
    if issues is not None and found:
        issues.extend(found if chunk.byte_range is not None else (place_issue(i, path=chunk.path) for i in found))
    return out


def bucket_of(ids: np.ndarray | pd.Series, n_buckets: int) -> np.ndarray:
    """The bucket of each id: a hash that is the same in every process and on every machine.

    >>> bucket_of(np.array(["vm-001", "vm-001", "vm-002"], object), 8).tolist()
    [5, 5, 0]
    """
    h = pd.util.hash_array(np.asarray(ids, dtype=object))
    buckets: np.ndarray = (h % np.uint64(n_buckets)).astype(np.int64)
    return buckets


def write_parquet_atomic(table: Any, path: Path) -> None:
    """Writes a pyarrow table (or a DataFrame) to ``path`` through a unique temporary file and a rename.

    Two attempts of the same task never share a temporary file, and the rename is atomic,
    so a reader sees either no file or a whole one.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def bucket_dir(scratch: str | Path, source: int, bucket: int) -> Path:
    """The scratch folder holding the pieces of one bucket of one source."""
    return Path(scratch) / f"s{source:03d}" / f"b{bucket:05d}"


def split_chunk(
    chunk: Chunk,
    chunk_no: int,
    n_buckets: int,
    scratch: str,
    *,
    id_col: str = "id",
    time_col: str = "timestamp",
    out_of_range: RangePolicy = "clip",
    reject: bool = False,
    numeric_columns: Collection[str] = (),
) -> dict[str, Any]:
    """Pass 1: reads one chunk and writes its rows, by bucket of id, to the scratch folder.

    Args:
        chunk: the chunk.
        chunk_no: its number; pieces are read back in this order.
        n_buckets: buckets per source.
        scratch: the scratch folder.
        id_col: the id column's name.
        time_col: the timestamp column's name.
        out_of_range: the range policy of validation.
        reject: a series with a bad value is rejected (masked, and returned in ``issues``)
            instead of failing the chunk (see :func:`read_chunk`).
        numeric_columns: see :func:`read_chunk`.

    Returns:
        ``{"rows": rows read, "buckets": {bucket: rows}, "issues": [SeriesIssue],
        "warnings": [InputWarning], "metrics": [column], "text_columns": [column]}`` (small; the
        data stays on disk): the last two are the columns that held a number
        (:func:`columns_with_numbers`) and those ignored as text. Nothing is logged here: the
        client reports each warning once for the whole job.
    """
    issues: list[SeriesIssue] | None = [] if reject else None
    warnings: list[InputWarning] = []
    try:
        df = read_chunk(
            chunk,
            id_col=id_col,
            time_col=time_col,
            out_of_range=out_of_range,
            issues=issues,
            warnings=warnings,
            numeric_columns=numeric_columns,
        )
    except LinesAreNotRows:
        # Nothing written: the client reads the whole file again in one task (run_split).
        return empty_split(whole=True)
    df = df.rename(columns={id_col: "id", time_col: "timestamp"})
    counts = write_pieces(df, bucket_of(df["id"].to_numpy(), n_buckets), scratch, chunk.source, chunk_no)
    return {
        "rows": len(df),
        "buckets": counts,
        "issues": issues or [],
        "warnings": warnings,
        "metrics": columns_with_numbers(df, issues or (), skip=("id", "timestamp")),
        "text_columns": text_columns(warnings),
    }


def empty_split(*, whole: bool = False) -> dict[str, Any]:
    """The result of :func:`split_chunk` for a chunk that wrote no row: a new dict each time.

    Args:
        whole: the chunk is a CSV byte range whose file must be read whole (``"whole": True``,
            see :class:`LinesAreNotRows`).
    """
    out: dict[str, Any] = {"rows": 0, "buckets": {}, "issues": [], "warnings": [], "metrics": [], "text_columns": []}
    if whole:
        out["whole"] = True
    return out


def columns_with_numbers(
    df: pd.DataFrame, issues: Sequence[SeriesIssue] = (), *, skip: Sequence[str] = ()
) -> list[str]:
    """The columns of a validated chunk that held a number: one is left, or a series of the column
    was rejected (a far-out number; or a text cell, which a column holding no number in the chunk
    is not read as a metric for). An all-empty column holds none: it is no evidence either way.

    >>> columns_with_numbers(pd.DataFrame({"id": ["a"], "x": [1.0], "y": [np.nan]}), skip=["id"])
    ['x']
    """
    rejected = {i.metric for i in issues}
    return [c for c in df.columns if c not in skip and (c in rejected or bool(df[c].notna().any()))]


def text_columns(warnings: Sequence[InputWarning]) -> list[str]:
    """The columns a chunk's validation ignored as text (from its ``text_columns`` warnings).

    Whether a column is a metric is decided on what one chunk holds: a column with text in its
    first rows and numbers further on is text in one chunk and a metric in the next. A whole
    read makes it a metric whose text cells reject their series; a job that finds a column of
    one file in both lists reads the chunks that ignored it again, with it in ``numeric_columns``
    (:func:`~atomic_usage.cluster.shuffle.mixed_columns`).
    """
    return [c for w in warnings if w.kind == "text_columns" for c in w.columns]


def read_header(path: str | Path, *, id_col: str = "id") -> pd.DataFrame:
    """A wide file's columns as an empty frame, without reading its data (Parquet: its schema,
    with its types; CSV: its header, ``id_col`` as text).

    Raises:
        SchemaError: the file cannot be read (the message names it).
    """
    from ..data.readers import is_parquet, map_read_errors

    with map_read_errors(path):
        if is_parquet(path):
            import pyarrow.parquet as pq

            return pq.read_schema(path).empty_table().to_pandas()
        return pd.read_csv(path, dtype={id_col: str}, nrows=0)


def header_columns(path: str | Path) -> list[str]:
    """The columns of a wide file as a whole read names them (Parquet: its schema; CSV: its header)."""
    return list(map(str, read_header(path).columns))


def write_pieces(
    df: pd.DataFrame, buckets: np.ndarray, scratch: str | Path, source: int, chunk_no: int
) -> dict[int, int]:
    """Writes the rows of ``df`` to ``bucket_dir(scratch, source, b) / c{chunk_no}.arrow``, by bucket.

    Args:
        df: a validated wide frame.
        buckets: the bucket of each row, shape (len(df),).
        scratch: the scratch folder.
        source: the source the rows come from.
        chunk_no: the chunk's number; pieces are read back in this order.

    Returns:
        Rows written per bucket.
    """
    import pyarrow as pa

    counts: dict[int, int] = {}
    # A stable sort keeps each id's rows in their order within the chunk. The frame is turned
    # into Arrow once and reordered once; each piece is then a zero-copy slice of it.
    order = np.argsort(buckets, kind="stable")
    sorted_b = buckets[order]
    table = pa.Table.from_pandas(df, preserve_index=False).take(pa.array(order))
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_b) != 0]) if len(sorted_b) else np.array([], np.int64)
    ends = [*starts[1:], len(sorted_b)] if len(starts) else []  # no rows: no piece
    for a, e in zip(starts, ends, strict=True):
        b = int(sorted_b[a])
        counts[b] = int(e - a)
        _write_piece(table.slice(a, e - a), bucket_dir(scratch, source, b) / f"c{chunk_no:06d}.arrow")
    return counts


def _write_piece(table: Any, path: Path) -> None:
    """Writes an Arrow IPC file through a unique temporary name and a rename (see :func:`write_parquet_atomic`)."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    codec = PIECE_COMPRESSION if pa.Codec.is_available(PIECE_COMPRESSION) else None
    try:
        with (
            pa.OSFile(str(tmp), "wb") as sink,
            pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer,
        ):
            writer.write_table(table)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_bucket(directory: str | Path) -> pd.DataFrame:
    """Pass 2: reads every piece of one bucket, in chunk order, into one wide frame."""
    import pyarrow as pa

    tables = []
    for p in sorted(Path(directory).glob("c*.arrow")):
        with pa.OSFile(str(p), "rb") as source:
            tables.append(pa.ipc.open_file(source).read_all())
    if not tables:
        return pd.DataFrame({"id": pd.Series([], dtype=str), "timestamp": pd.Series([], dtype="datetime64[ns, UTC]")})
    table = pa.concat_tables(tables, promote_options="default")
    return table.to_pandas()
