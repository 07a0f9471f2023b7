"""Exception types of the corpus builder.

Every error says what went wrong, which file / sample / gene it concerns and what to do, so that a
user who runs ``txfm build-corpus`` on their own files can fix the input without reading our code.
All derive from :class:`CorpusBuildError` (a ``ValueError``) so callers can catch one type.
"""

from __future__ import annotations


class CorpusBuildError(ValueError):
    """Base class: the corpus cannot be built from these inputs / options."""


class MissingSourceFilesError(CorpusBuildError, FileNotFoundError):
    """Files a source needs are not in ``data_dir`` (and cannot be downloaded)."""


class CorruptInputError(CorpusBuildError):
    """An input file cannot be parsed: truncated, wrong format or inconsistent layout."""


class NotCountsError(CorpusBuildError):
    """A matrix holds values that are not raw counts (negative, non-integer or non-finite)."""


class GeneMappingError(CorpusBuildError):
    """The gene identifiers of an input map to no (or too few) Ensembl genes of the vocabulary."""


class CorpusFormatError(CorpusBuildError):
    """A corpus folder on disk does not follow the corpus contract (missing or inconsistent files)."""
