"""Tables between stages: typed empty tables, Parquet inputs read with the file named when they are damaged, and
caches."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common.cli import InputError

RESTORE_HINT = "rebuild it (`dvc repro`) or restore it (`dvc checkout`)"


def empty_table(columns: Mapping[str, str]) -> pd.DataFrame:
    """A table with no rows and the given column dtypes (pandas names), in that order."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def read_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A stage's Parquet input (only `columns`, if given).

    A missing file stays a FileNotFoundError (reported with its own hint); a damaged
    file, or one without the columns, is an InputError naming the file and what is wrong.
    """
    try:
        return pd.read_parquet(path, columns=None if columns is None else list(columns))
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: {table_problem(Path(path), columns, exc)}; {RESTORE_HINT}") from None


def read_cache(path: Path, columns: Mapping[str, str], prog: str, remedy: str) -> pd.DataFrame | None:
    """A stage's own cache table (a persistent output it reads back), typed as `columns`; None when there is none to
    use.

    A damaged cache, or one in another layout (written by an older version), is not an error: `<prog>: warning:`
    says so and what the stage does instead (`remedy`), and the stage rebuilds it.
    """
    if not path.exists():
        return None
    try:
        cache = read_table(path)
    except InputError as error:
        print(f"{prog}: warning: {error}: {remedy}", file=sys.stderr)
        return None
    return cache.astype(dict(columns)) if list(cache.columns) == list(columns) else None


def table_problem(path: Path, columns: Sequence[str] | None, error: Exception) -> str:
    """What is wrong with a Parquet file that could not be read: the columns it lacks, or the reader's error."""
    try:
        present = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError):
        return f"not a readable Parquet table ({error})"
    missing = [column for column in columns or () if column not in present]
    return f"lacks the column(s) {missing}" if missing else f"not a readable Parquet table ({error})"
