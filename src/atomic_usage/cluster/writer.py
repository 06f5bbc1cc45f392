"""The CLI's output files: frames appended one after another, then renamed into place.

Both single-process paths of ``atomic-usage forecast`` write through :class:`FrameWriter`
(and ``pull`` too): the in-memory one writes one frame, the chunked one a frame per chunk of
machines. Either way the file has the same layout: a CSV with one header line, timestamps as
``2026-01-05T05:00:00Z`` and values as ``%.6g``; or a Parquet file with the pandas schema of
the frame (one row group per frame written).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pandas as pd

from ..errors import SchemaError

__all__ = ["FrameWriter"]


class FrameWriter:
    """Writes frames with a UTC ``timestamp`` column to one CSV or Parquet file (by suffix), in order.

    The frames go to ``<name>.tmp`` beside the file, which is renamed to the file when the
    ``with`` block ends without an error. On an error the temporary file is removed, so a
    failed run leaves neither a partial output nor an old one overwritten.

    Args:
        path: the output file (``.parquet``/``.pq`` for Parquet, anything else for CSV).

    Attributes:
        rows: rows written so far.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "fc.csv"
    >>> with FrameWriter(out) as w:
    ...     w.write(pd.DataFrame({"id": ["a"], "timestamp": pd.to_datetime(["2026-01-05"], utc=True), "mean": [0.5]}))
    >>> out.read_text()
    'id,timestamp,mean\\na,2026-01-05T00:00:00Z,0.5\\n'
    """

    @staticmethod
    def temporary(path: Path) -> Path:
        """The file the frames go to until the output is complete: ``<name>.tmp`` beside it."""
        return path.with_name(path.name + ".tmp")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.temporary(self.path)
        self.parquet = self.path.suffix.lower() in (".parquet", ".pq")
        self.rows = 0
        self._pq: Any = None
        self._csv: IO[str] | None = None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise SchemaError(
                f"{self.path}: cannot write the output ({exc.strerror or exc}); choose a writable path.",
                path=str(self.path),
            ) from None

    def __enter__(self) -> FrameWriter:
        if self.path.is_dir():
            raise SchemaError(
                f"{self.path}: the output is a folder; give a file name such as {self.path / 'forecast.csv'}.",
                path=str(self.path),
            )
        with self._errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, df: pd.DataFrame) -> None:
        """Appends ``df`` (columns and dtypes as the first frame's) to the file."""
        with self._errors():
            if self.parquet:
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pandas(df, preserve_index=False)
                if self._pq is None:
                    self._pq = pq.ParquetWriter(self.tmp, table.schema)
                elif table.schema != self._pq.schema:
                    # An all-null column of a later frame comes out typed null; give it the first frame's type.
                    table = table.cast(self._pq.schema)
                self._pq.write_table(table)
            else:
                out = df.copy()
                out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
                first = self._csv is None
                if self._csv is None:
                    self._csv = open(self.tmp, "w", encoding="utf-8", newline="")  # closed by _close()
                out.to_csv(self._csv, header=first, index=False, float_format="%.6g")
        self.rows += len(df)

    def _close(self) -> None:
        if self._pq is not None:
            self._pq.close()
            self._pq = None
        if self._csv is not None:
            self._csv.close()
            self._csv = None

    def discard(self) -> None:
        """Drops everything written so far; the next :meth:`write` starts the file again."""
        with contextlib.suppress(OSError):
            self._close()
        self.tmp.unlink(missing_ok=True)
        self.rows = 0

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            with self._errors():
                self._close()
                self.tmp.replace(self.path)
        except BaseException:
            self.discard()
            raise
