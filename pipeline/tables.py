"""Typed empty tables, so that a stage with nothing to write yet still writes its schema."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd


def empty_table(columns: Mapping[str, str]) -> pd.DataFrame:
    """A table with no rows and the given column dtypes (pandas names), in that order."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
