"""TxFM evaluation: the benchmarks of TXFM_SPEC §3, the baselines TxFM must beat, and readable reports.

Python API::

    from evaluation import build_embedders, run_celltype_benchmark, write_report, headline_table
    embedders, skipped = build_embedders(model="runs/tiny")          # TxFM + every baseline
    results = run_celltype_benchmark(adata, embedders, seeds=5, skipped=skipped)
    write_report(results, "runs/eval")                                # results.json, results.md, PNGs
    print(headline_table(results))

Command line: ``txfm evaluate perturbation|genes|celltype`` (see :mod:`evaluation.cli`).
"""

from .celltype import run_celltype_benchmark
from .embedders import (
    BASELINES,
    Embedder,
    LogNormEmbedder,
    PCAEmbedder,
    RawCountsEmbedder,
    ScVIEmbedder,
    TxFMEmbedder,
    build_embedders,
    highly_variable_genes,
    make_embedder,
)
from .errors import (
    EmbedderUnavailableError,
    EvaluationError,
    MissingObsColumnError,
    NoControlsError,
    RelationshipDataError,
)
from .genes import run_gene_benchmark
from .perturbation import PerturbationProtocol, run_perturbation_benchmark
from .report import format_table, headline_table, load_results, results_markdown, write_report
from .simulate import simulate_perturb_seq

__all__ = [
    "BASELINES",
    "Embedder",
    "EmbedderUnavailableError",
    "EvaluationError",
    "LogNormEmbedder",
    "MissingObsColumnError",
    "NoControlsError",
    "PCAEmbedder",
    "PerturbationProtocol",
    "RawCountsEmbedder",
    "RelationshipDataError",
    "ScVIEmbedder",
    "TxFMEmbedder",
    "build_embedders",
    "format_table",
    "headline_table",
    "highly_variable_genes",
    "load_results",
    "make_embedder",
    "results_markdown",
    "run_celltype_benchmark",
    "run_gene_benchmark",
    "run_perturbation_benchmark",
    "simulate_perturb_seq",
    "write_report",
]
