"""Optimizers: row-sparse Adam/AdamW."""
from .row_adam import RowSparseAdam, RowSparseAdamW

__all__ = ["RowSparseAdam", "RowSparseAdamW"]
