"""Model cards generated from a run's real outputs — never typed by hand.

The model card (the checkpoint's ``README.md``) is built from the checkpoint's ``config.json``, its
training summary (``training_summary.json`` written by ``training/pretrain.py``, when present) and the
evaluation ``results.json`` files of ``txfm evaluate``. Its YAML header is produced with
``huggingface_hub``'s card classes, so the Hub reads ``library_name``, ``pipeline_tag``, the datasets
and a ``model-index`` holding every TxFM evaluation number next to which the baselines are tabulated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TAGS = ["biology", "transcriptomics", "rna-seq", "single-cell", "masked-autoencoder", "txfm", "feature-extraction"]
PAPER = "Kenyon-Dean, Selega, Bendidi et al., *Effective Biological Representation Learning by Masking Gene Expression* (2026)"
TASK_NAMES = {
    "celltype": "Cell-type representation (Kedzierska et al. 2025 protocol)",
    "perturbation": "Zero-shot perturbation benchmark (Bendidi et al. 2024 protocol)",
    "genes": "Gene-relationship recall of model parameters",
}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _txfm_model_name(results: dict) -> str | None:
    """The results entry that is the TxFM checkpoint (the evaluation names it ``TxFM…``)."""
    for name in results.get("models", {}):
        if name.lower().startswith("txfm"):
            return name
    return None


def eval_results(results_list: list[dict], model_name: str) -> list[EvalResult]:
    """``model-index`` entries: every TxFM metric mean, per task and dataset."""
    entries = []
    for results in results_list:
        txfm = _txfm_model_name(results)
        if txfm is None:
            continue
        dataset = results.get("dataset", {})
        for metric, value in results["models"][txfm]["metrics"].items():
            if not isinstance(value, dict) or value.get("mean") is None:
                continue
            entries.append(
                EvalResult(
                    task_type="feature-extraction",
                    task_name=TASK_NAMES.get(results["task"], results["task"]),
                    dataset_type=str(dataset.get("name") or "custom"),
                    dataset_name=str(dataset.get("name") or "custom"),
                    metric_type=metric,
                    metric_name=metric,
                    metric_value=round(float(value["mean"]), 4),
                )
            )
    return entries


def _results_section(results_list: list[dict]) -> str:
    if not results_list:
        return (
            "No evaluation has been run for this checkpoint yet. Run `txfm evaluate celltype|perturbation|genes "
            "--model <this folder> --data <file.h5ad> --out <dir>` and regenerate this card with "
            "`python -m model_card --model <this folder> --results <dir>/results.json`."
        )
    from evaluation.report import format_table

    parts = []
    for results in results_list:
        dataset = results.get("dataset", {})
        protocol = results.get("protocol", {})
        parts.append(
            f"### {TASK_NAMES.get(results['task'], results['task'])} — {dataset.get('name')}\n\n"
            f"{dataset.get('n_obs', '?')} samples × {dataset.get('n_vars', '?')} genes; seeds: "
            f"{protocol.get('seeds')}; {'; '.join(str(n) for n in protocol.get('notes', []))}\n\n"
            f"{format_table(results)}\n"
        )
    return "\n".join(parts)


def _training_section(config: dict, summary: dict | None) -> str:
    rows = [
        ("preset", config.get("preset")),
        ("blocks × heads × width", f"{config['num_hidden_layers']} × {config['num_attention_heads']} × {config['hidden_size']}"),
        ("visible genes K", config["num_visible_genes"]),
        ("vocabulary", f"{config['vocab_size']:,} genes (unversioned Ensembl IDs, stored in config.json)"),
        ("decoder", f"{config['decoder_num_layers']} linear layers, width {config['decoder_hidden_size']}"),
        ("output activation / loss", f"{config['output_activation']} / {config['loss']} (fp32)"),
        ("stochastic depth / LayerScale", f"{config['drop_path_rate']} / {config['layer_scale_init']}"),
    ]
    if summary:
        for key in ("corpus", "corpus_samples", "steps", "epochs", "global_batch_size", "learning_rate",
                    "weight_decay", "mixed_precision", "num_processes", "final_train_loss", "final_validation_loss",
                    "validation_masked_pearson", "wall_time_s", "init_from"):
            if summary.get(key) is not None:
                rows.append((key.replace("_", " "), summary[key]))
    table = "\n".join(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                      for key, value in rows)
    text = "| setting | value |\n|---|---|\n" + table
    if summary and summary.get("training_config"):
        config_json = json.dumps(summary["training_config"], indent=1, default=str)
        text += f"\n\n<details><summary>Full training configuration</summary>\n\n```json\n{config_json}\n```\n</details>"
    return text


def build_model_card(
    model_dir: str | os.PathLike,
    results_paths: list[str | os.PathLike] = (),
    repo_id: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The model card of a checkpoint folder, from its config, training summary and evaluation results."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise FileNotFoundError(f"{model_dir} has no config.json: is it a TxFM checkpoint folder?")
    summary = _read_json(model_dir / "training_summary.json")
    results_list = [_read_json(Path(p) / "results.json" if Path(p).is_dir() else Path(p)) for p in results_paths]
    missing = [str(p) for p, r in zip(results_paths, results_list) if r is None]
    if missing:
        raise FileNotFoundError(f"results.json not found: {missing}")
    name = repo_id or model_dir.name
    datasets = [summary["hub_dataset_id"]] if summary and summary.get("hub_dataset_id") else None
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license=license,
        tags=TAGS,
        datasets=datasets,
        model_name=name,
        eval_results=eval_results(results_list, name) or None,
    )
    repo = repo_id or "<this folder>"
    body = f"""
# {name}

A **TxFM** masked autoencoder over RNA-seq counts ({PAPER}): it embeds a bulk RNA-seq sample or a
single cell from its raw counts. This card was generated by `model_card` from the checkpoint's
`config.json`, its training summary and `results.json` of `txfm evaluate`.

## Intended use

Sample embeddings for clustering, cell-type annotation, perturbation analysis and batch integration
of human RNA-seq; gene representations (encoder codebook, decoder weights) for gene-relationship
analysis. Input: raw integer counts of human genes named by Ensembl ID or HGNC symbol. Not for
clinical decisions. Compare against the simple baselines (log-normalised counts, PCA) on your own
held-out data: they are strong.

## How to use

```python
import anndata as ad
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)   # the encoder
adata = ad.read_h5ad("my_counts.h5ad")                                 # raw counts in X

# with the `txfm` package installed:
from modeling_txfm import embed
embed(adata, model)                                                    # adata.obsm["X_txfm"]

# or with nothing but transformers, through the bundled processor code:
from transformers import AutoFeatureExtractor
processor = AutoFeatureExtractor.from_pretrained("{repo}", trust_remote_code=True)
embedding = model(**processor(adata.X, list(adata.var_names))).embedding
```

`AutoModelForPreTraining` loads encoder + decoder (the reconstruction head). At inference the model
sees a fixed, seeded draw of {config['num_visible_genes']} of the sample's profiled genes — the same
genes for every sample of a dataset — so embeddings do not depend on batch composition.

## Training

{_training_section(config, summary)}

Recipe: AdamW (betas 0.9/0.999, eps 1e-6, weight decay 1/(lr × steps)), one-cycle cosine schedule with
10 % warm-up, gradient clipping; Poisson loss over every profiled gene in fp32.

## Evaluation

{_results_section(results_list)}

## Limitations

- Human genes only; genes outside the {config['vocab_size']:,}-gene vocabulary are ignored (the match
  rate is reported when embedding).
- {"This checkpoint was trained on a small corpus for a short time (see Training): it demonstrates the pipeline, it is not the paper's model. " if (config.get("preset") == "txfm-tiny") else ""}The paper-scale
  models need the full DiverseRNA-1.4M corpus and hundreds of GPU-hours.
- Embeddings carry batch effects of the input data like any representation; post-process per batch
  (centering on controls, TVN) for perturbation work.

## Citation

{PAPER}. Implementation: the `txfm` package.
"""
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body)


def write_model_card(model_dir: str | os.PathLike, results_paths: list[str | os.PathLike] = (), **kwargs) -> Path:
    """Write ``README.md`` into the checkpoint folder and return its path."""
    card = build_model_card(model_dir, results_paths, **kwargs)
    path = Path(model_dir) / "README.md"
    card.save(path)
    return path
