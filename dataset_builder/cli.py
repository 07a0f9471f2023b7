"""``txfm build-corpus``: build a corpus from the paper sources or from local files.

Examples::

    txfm build-corpus --source local --data-dir my.h5ad other.csv --out corpus/ --batch-key donor
    txfm build-corpus --source gtex --data-dir downloads/ --out gtex_corpus/
    txfm build-corpus --source diverse_rna_1.4m --data-dir downloads/ --out diverse_rna/
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .build import DEFAULT_CONTROL_VALUES, BuildOptions, build_corpus
from .errors import CorpusBuildError
from .local import local_specs


def register(subparsers) -> None:
    from .sources import source_names

    parser = subparsers.add_parser(
        "build-corpus",
        help="build a sparse Parquet RNA-seq corpus (paper sources or local files)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", required=True, choices=source_names(), help="paper source, collection, or 'local'")
    parser.add_argument("--data-dir", nargs="+", default=None, help="downloaded source files (paper sources) or input files/folders (local)")
    parser.add_argument("--out", required=True, help="corpus output folder")
    parser.add_argument("--vocabulary", help="fixed vocabulary: vocabulary.json, corpus folder or checkpoint folder")
    group = parser.add_argument_group("metadata (comma-separated candidate obs columns; first present wins)")
    group.add_argument("--batch-key", default="batch")
    group.add_argument("--batch-pattern", help="regex on sample ids whose first group is the batch (when no batch column)")
    group.add_argument("--cell-type-key", default="cell_type,celltype,cell_types")
    group.add_argument("--tissue-key", default="tissue")
    group.add_argument("--perturbation-key")
    group.add_argument("--control-key", help="boolean obs column marking controls")
    group.add_argument("--control-values", default=",".join(DEFAULT_CONTROL_VALUES), help="perturbation values that are controls")
    group = parser.add_argument_group("reading")
    group.add_argument("--layer", default="auto", help="h5ad matrix: auto, X, raw or a layer name")
    group.add_argument("--gene-column", default="auto", help="var column with gene identifiers (auto: Ensembl column or index)")
    orientation = group.add_mutually_exclusive_group()
    orientation.add_argument("--samples-as-rows", dest="samples_as_rows", action="store_const", const=True, default=None)
    orientation.add_argument("--genes-as-rows", dest="samples_as_rows", action="store_const", const=False)
    group.add_argument("--allow-non-integer", action="store_true", help="round non-integer values instead of refusing them")
    group = parser.add_argument_group("curation and splitting")
    group.add_argument("--min-genes", type=int, help="drop samples expressing fewer genes (local default 0)")
    group.add_argument("--min-cells", type=int, help="drop genes expressed in fewer samples (local default 0)")
    group.add_argument("--keep-duplicates", action="store_true", help="keep exact-duplicate samples")
    group.add_argument("--phenoprint-embeddings", help=".npy embeddings of the K562 rows for phenoprint curation")
    group.add_argument("--validation-fraction", type=float, default=0.1)
    group.add_argument("--validation-batches", help="comma-separated batches to hold out (applies to every source)")
    group = parser.add_argument_group("output")
    group.add_argument("--rows-per-shard", type=int, default=20_000)
    group.add_argument("--block-nnz", type=int, default=4_000_000, help="non-zeros per read block (bounds memory)")
    group.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the corpus folder as a Hub dataset repository")
    group.add_argument("--private", action="store_true")
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _specs(args):
    overrides = {k: v for k, v in (("min_genes", args.min_genes), ("min_cells", args.min_cells)) if v is not None}
    if args.phenoprint_embeddings:
        overrides["phenoprint"] = {"embeddings": args.phenoprint_embeddings}
    if args.source == "local":
        if not args.data_dir:
            raise CorpusBuildError("--source local needs --data-dir FILE_OR_FOLDER [...].")
        specs = local_specs(
            args.data_dir,
            batch_key=args.batch_key,
            cell_type_key=args.cell_type_key,
            tissue_key=args.tissue_key,
            perturbation_key=args.perturbation_key,
            control_key=args.control_key,
            control_values=[v for v in args.control_values.split(",") if v],
            layer=args.layer,
            gene_column=args.gene_column,
            samples_as_rows=args.samples_as_rows,
            min_genes=overrides.get("min_genes", 0),
            min_cells=overrides.get("min_cells", 0),
        )
        for spec in specs:
            spec.batch_pattern = args.batch_pattern
        return specs, {}
    from .sources import resolve

    if not args.data_dir or len(args.data_dir) != 1:
        raise CorpusBuildError(
            f"--source {args.source} needs --data-dir DIR holding the downloaded files (one folder; "
            "use the TxFMCorpusBuilder API without data_dir to download them)."
        )
    return resolve(args.source, args.data_dir[0], overrides=overrides)


def _keep_freed_memory() -> None:
    """Let glibc reuse freed blocks instead of returning them to the OS (CLI process only).

    Why: every read block allocates tens of MB of numpy temporaries; above glibc's default mmap
    threshold each is a fresh mapping whose pages are zeroed on first touch and unmapped on free,
    ~13 % of the build's CPU. Keeping them in the heap removes that without raising the peak
    (the largest live set is unchanged). Silently skipped where ``mallopt`` does not exist.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 64 << 20)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _keep_freed_memory()
    try:
        specs, info = _specs(args)
        validation_batches = None
        if args.validation_batches:
            held = [b for b in args.validation_batches.split(",") if b]
            validation_batches = {spec.source: held for spec in specs}
        options = BuildOptions(
            vocabulary=args.vocabulary,
            validation_fraction=args.validation_fraction,
            validation_batches=validation_batches,
            rows_per_shard=args.rows_per_shard,
            block_nnz=args.block_nnz,
            allow_non_integer=args.allow_non_integer,
            drop_duplicates=not args.keep_duplicates,
            sources_info=info,
            dataset_name=f"TxFM corpus: {args.source}",
            progress=not args.quiet,
        )
        result = build_corpus(specs, args.out, options)
    except CorpusBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {
        "out": str(result.out),
        "samples": result.n_samples,
        "vocabulary_genes": result.n_genes,
        "shards_written": result.written_shards,
        "shards_reused": result.resumed_shards,
        "per_source": {name: entry["samples_out"] for name, entry in result.report["sources"].items()},
    }
    print(json.dumps(summary, indent=1))
    if args.push_to_hub:
        return push_to_hub(Path(args.out), args.push_to_hub, args.private)
    return 0


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> int:
    """Upload the corpus folder (shards, vocabulary, profiles, card) as a dataset repository."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", ignore_patterns=[".work/*"])
    except Exception as error:  # offline, no token, no permission: one clear line, not a traceback
        print(
            f"error: could not push {folder} to the Hub dataset {repo_id!r} ({type(error).__name__}: {error}). "
            "Log in with `hf auth login` (or set HF_TOKEN) and check your network; the corpus on disk is complete.",
            file=sys.stderr,
        )
        return 3
    print(f"pushed {folder} to https://huggingface.co/datasets/{repo_id}")
    return 0
