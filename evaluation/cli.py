"""``txfm evaluate perturbation|genes|celltype``: run a benchmark, write results.json, results.md and figures.

Examples::

    txfm evaluate celltype --model runs/tiny --data example:pbmc68k --out runs/eval_pbmc
    txfm evaluate perturbation --model runs/tiny --data rpe1.h5ad --pert-col gene \\
        --control-col gene --control-value non-targeting --batch-col gem_group --out runs/eval_rpe1
    txfm evaluate genes --model runs/tiny --data corpus_sample.h5ad --out runs/eval_genes
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import anndata as ad

from .embedders import BASELINES, build_embedders
from .report import headline_table, write_report

EXAMPLE_PREFIX = "example:"


def load_data(spec: str, backed: bool = False) -> tuple[ad.AnnData, str | None, str]:
    """An h5ad path (optionally backed) or ``example:<loader>`` from ``modeling_txfm.example_data``."""
    if spec.startswith(EXAMPLE_PREFIX):
        from modeling_txfm import example_data

        name = spec.removeprefix(EXAMPLE_PREFIX)
        loader = getattr(example_data, name, None)
        if loader is None or name.startswith("_"):
            raise SystemExit(f"Unknown example dataset {name!r}: try example:pbmc68k or example:wu2020.")
        return loader(), None, name
    if not Path(spec).is_file():
        raise SystemExit(f"--data {spec}: no such file.")
    return ad.read_h5ad(spec, backed="r" if backed else None), spec, Path(spec).name


def _baselines(text: str) -> list[str]:
    if text in ("", "none"):
        return []
    return [b.strip() for b in text.split(",") if b.strip()]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="TxFM checkpoint folder (omit to evaluate the baselines only)")
    parser.add_argument("--data", required=True, help="h5ad file of raw counts, or example:pbmc68k / example:wu2020")
    parser.add_argument("--out", required=True, help="output folder for results.json, results.md and PNG figures")
    parser.add_argument("--baselines", default=",".join(BASELINES), help=f"comma list from {','.join(BASELINES)}, lognorm_hvg<N>; 'none'")
    parser.add_argument("--corpus", help="training corpus h5ad on which baselines are fitted (default: the evaluation data)")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="TxFM embedding batch size")
    parser.add_argument("--model-name", default="TxFM", help="row name of the model in the tables")
    parser.add_argument("--no-figures", action="store_true")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``txfm evaluate`` with its three benchmarks to the ``txfm`` command line."""
    evaluate = subparsers.add_parser("evaluate", help="benchmark a TxFM checkpoint against the baselines")
    tasks = evaluate.add_subparsers(dest="task", required=True)

    celltype = tasks.add_parser("celltype", help="cell-type benchmark: clustering, ASW, probes")
    _common(celltype)
    celltype.add_argument("--label-key", default="cell_type")
    celltype.add_argument("--batch-key", default="batch")
    celltype.set_defaults(func=run_celltype_command)

    perturbation = tasks.add_parser("perturbation", help="perturbation benchmark: ilisi, lin, knn, p.cst, bmdb, inv")
    _common(perturbation)
    perturbation.add_argument("--pert-col", default="perturbation", help="obs column with the perturbed gene")
    perturbation.add_argument("--control-col", default="is_control", help="obs column flagging controls")
    perturbation.add_argument("--control-value", help="value of --control-col meaning control (if not boolean)")
    perturbation.add_argument("--batch-col", default="batch", help="obs column with the experimental batch")
    perturbation.add_argument("--relationships", help="folder with CORUM.txt, HuMAP.txt, … (default: $TXFM_GENE_RELATIONSHIPS)")
    perturbation.add_argument("--n-null", type=int, default=10_000, help="p.cst null size (default 10,000)")
    perturbation.add_argument("--postprocessing", default="center,centerscale,tvn")
    perturbation.set_defaults(func=run_perturbation_command)

    genes = tasks.add_parser("genes", help="gene-relationship recall of codebook / decoder weights vs PCA loadings")
    genes.add_argument("--model", help="TxFM checkpoint folder")
    genes.add_argument("--data", help="h5ad (or example:…) for the PCA-loadings baseline")
    genes.add_argument("--out", required=True)
    genes.add_argument("--relationships", help="folder with CORUM.txt, HuMAP.txt, …")
    genes.add_argument("--no-figures", action="store_true")
    genes.set_defaults(func=run_genes_command)


def _finish(results: dict, args) -> int:
    written = write_report(results, args.out, figures=not args.no_figures)
    print(headline_table(results))
    print(f"\nwrote {', '.join(str(p) for p in written.values())}")
    return 0


def _embedders(args):
    return build_embedders(_baselines(args.baselines), model=args.model, batch_size=args.batch_size, model_name=args.model_name)


def run_celltype_command(args) -> int:
    from .celltype import run_celltype_benchmark

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    adata, path, name = load_data(args.data)
    corpus = load_data(args.corpus)[0] if args.corpus else None
    embedders, skipped = _embedders(args)
    results = run_celltype_benchmark(
        adata, embedders, label_key=args.label_key, batch_key=args.batch_key, seeds=args.seeds, corpus=corpus,
        dataset_path=path, dataset_name=name, skipped=skipped,
    )
    return _finish(results, args)


def run_perturbation_command(args) -> int:
    from .perturbation import PerturbationProtocol, run_perturbation_benchmark

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    adata, path, name = load_data(args.data, backed=True)
    corpus = load_data(args.corpus, backed=True)[0] if args.corpus else None
    protocol = PerturbationProtocol(
        pert_col=args.pert_col, control_col=args.control_col, batch_col=args.batch_col, control_value=args.control_value,
        seeds=list(range(args.seeds)), postprocessings=[p.strip() for p in args.postprocessing.split(",")], n_null=args.n_null,
    )
    embedders, skipped = _embedders(args)
    results = run_perturbation_benchmark(
        adata, embedders, protocol, corpus=corpus, relationships_dir=args.relationships, dataset_path=path, dataset_name=name, skipped=skipped,
    )
    return _finish(results, args)


def run_genes_command(args) -> int:
    from .genes import run_gene_benchmark

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = None
    if args.model:
        from modeling_txfm import load_model

        model = load_model(args.model)
    adata, path, name = load_data(args.data) if args.data else (None, None, None)
    results = run_gene_benchmark(model, adata, relationships_dir=args.relationships or os.environ.get("TXFM_GENE_RELATIONSHIPS"), dataset_path=path, dataset_name=name)
    return _finish(results, args)
