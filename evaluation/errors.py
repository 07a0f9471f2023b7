"""Errors raised by the evaluation suite: each names what is missing and how to fix it."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Base class: the inputs of a benchmark cannot be evaluated as given."""


class MissingObsColumnError(EvaluationError, KeyError):
    """A required ``obs`` column (perturbation, control flag, batch, label) is absent."""

    def __init__(self, column: str, role: str, available: list[str]):
        self.column, self.role = column, role
        shown = ", ".join(available[:20]) + (" …" if len(available) > 20 else "")
        super().__init__(
            f"The {role} column {column!r} is not in adata.obs (columns: {shown}). "
            f"Pass the right name (CLI: --{role.replace(' ', '-')}-col / --{role.split()[0]}-key)."
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return self.args[0]


class NoControlsError(EvaluationError):
    """A batch has no control cells, so per-batch post-processing on controls is impossible."""


class RelationshipDataError(EvaluationError, FileNotFoundError):
    """The gene relationship databases (CORUM, HuMAP, …) cannot be found or read."""


class EmbedderUnavailableError(EvaluationError, ImportError):
    """An optional embedder (scVI) or the TxFM model code is not installed."""
