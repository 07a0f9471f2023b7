"""The dataset card (``README.md``) written beside the shards.

Its YAML header declares the Parquet files per split, so ``datasets.load_dataset(OUT)`` and the
Hub viewer find the splits without guessing; the body gives the schema, per-source counts and
each source's citation and licence (from the source manifest, or "user data" for local files).
"""

from __future__ import annotations

from pathlib import Path

from . import storage

SCHEMA_TABLE = """| column | type | meaning |
|---|---|---|
| `gene_index` | list<int32> | sorted positions in `vocabulary.json` of the sample's non-zero genes |
| `counts` | list<int32> | raw counts (> 0) of those genes, same length |
| `profile_id` | int32 | which gene set the sample's input measured (`profiles.json`): a vocabulary gene in the profile but not in `gene_index` is a measured zero; outside the profile it is unmeasured |
| `source` | string | source dataset |
| `sample_id` | string | cell barcode / sample id in the source |
| `batch` | string | experimental batch (validation holds out whole batches) |
| `perturbation` | string, null | perturbed gene / compound, where the source has one |
| `is_control` | bool | non-targeting / vehicle control |
| `cell_type` | string, null | annotated cell type, where the source has one |
| `tissue` | string, null | tissue, where the source has one |
"""


def write_card(out: Path, report: dict, samples: dict[str, int], n_genes: int, options) -> None:
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        *[line for split in ("train", "validation") if samples[split]
          for line in (f"  - split: {split}", f"    path: data/{split}-*.parquet")],
        "tags:",
        "- biology",
        "- transcriptomics",
        "- rna-seq",
        "---",
        "",
        f"# {options.dataset_name}",
        "",
        "Built with the TxFM corpus builder (`txfm build-corpus`): raw RNA-seq counts, one row per "
        "sample, sparse over a shared gene vocabulary of unversioned Ensembl IDs.",
        "",
        f"- samples: **{samples['train'] + samples['validation']:,}** "
        f"(train {samples['train']:,}, validation {samples['validation']:,})",
        f"- vocabulary: **{n_genes:,}** genes ({report['vocabulary']['kind']})",
        "",
        "## Schema",
        "",
        SCHEMA_TABLE,
        "Files: `data/{split}-NNNNN-of-NNNNN.parquet`, `vocabulary.json` (`gene_ids`, `symbols`), "
        "`profiles.json`, `curation_report.json`, `manifest.json` (SHA-256 of every shard).",
        "",
        "```python",
        "from dataset_builder import load_corpus",
        "corpus = load_corpus(PATH)            # or: datasets.load_dataset(PATH)",
        "```",
        "",
        "## Sources",
        "",
        "| source | samples in | samples kept | profiled genes | validation |",
        "|---|---|---|---|---|",
    ]
    for name, entry in report["sources"].items():
        split = entry["split"]
        lines.append(
            f"| {name} | {entry['samples_in']:,} | {entry['samples_out']:,} | {entry['profiled_genes']:,} | "
            f"{split['samples']['validation']:,} ({split['method']}) |"
        )
    lines += ["", "## Curation", ""]
    for name, entry in report["sources"].items():
        for item in entry["inputs"]:
            rules = ", ".join(
                f"{rule}: −{r['samples_removed']:,} samples / −{r['genes_removed']:,} genes"
                for rule, r in item["rules"].items()
            )
            mapping = item["mapping"]
            lines.append(
                f"- **{name}** (`{Path(item['file']).name}`): {mapping['n_harmonised_genes']:,} Ensembl genes from "
                f"{mapping['n_input_genes']:,} identifiers ({mapping['n_unmapped']:,} unmapped, "
                f"{mapping['n_duplicate_ids_summed']:,} duplicates summed); {rules or 'no rule removed anything'}."
            )
    lines += ["", "## Citations and licences", ""]
    for name in report["sources"]:
        info = options.sources_info.get(name, {})
        lines.append(
            f"- **{name}**: {info.get('citation', 'user-provided data')}"
            f" — licence: {info.get('licence', 'as set by the data owner')}"
        )
    storage.write_atomic(out / "README.md", "\n".join(lines) + "\n")
