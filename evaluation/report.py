"""results.json (the contract of docs/ARCHITECTURE.md), the Markdown tables generated from it, and figures.

``results.json`` holds: ``task``; ``dataset`` (path, sha256, shape, obs keys); ``protocol`` (seeds,
post-processing, split, notes); ``models`` — per model (TxFM and every baseline) how it was fitted
and each metric as ``{"mean", "std", "values"}`` over seeds; ``skipped`` baselines with the reason.
``results.md`` is generated from that file only, never typed by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# Column order and headers of the paper's tables, per task.
TABLE_COLUMNS = {
    "perturbation": [
        ("ilisi", "ilisi"),
        ("lin", "lin"),
        ("knn", "knn"),
        ("pcst", "p.cst"),
        ("bmdb", "bmdb"),
        ("inv", "inv"),
        ("avg", "avg"),
    ],
    "celltype": [
        ("nmi", "NMI"),
        ("ari", "ARI"),
        ("asw", "ASW"),
        ("batch_asw", "batch ASW"),
        ("linear_accuracy", "lin. acc"),
        ("linear_macro_f1", "lin. F1"),
        ("mlp_accuracy", "MLP acc"),
        ("mlp_macro_f1", "MLP F1"),
    ],
    "genes": [],  # one column per database, filled from the results
}


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Content hash of the evaluated file, so a table can be traced to the exact data."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_record(adata, path: str | os.PathLike | None = None, name: str | None = None, **keys) -> dict:
    """The ``dataset`` block: where the data came from, its hash and shape, and the obs keys used."""
    record = {"name": name or (Path(path).name if path else "in-memory AnnData"), "path": str(path) if path else None}
    record["sha256"] = sha256_file(path) if path and Path(path).is_file() else None
    if record["sha256"] is None and not getattr(adata, "isbacked", False):
        record["sha256_counts"] = _matrix_hash(adata.X)  # in-memory data: hash of the count matrix itself
    record.update({"n_obs": int(adata.n_obs), "n_vars": int(adata.n_vars)})
    record.update({k: v for k, v in keys.items() if v is not None})
    return record


def _matrix_hash(matrix) -> str:
    from scipy import sparse

    digest = hashlib.sha256()
    if sparse.issparse(matrix):
        matrix = matrix.tocsr()
        for part in (matrix.data, matrix.indices, matrix.indptr):
            digest.update(np.ascontiguousarray(part).tobytes())
    else:
        digest.update(np.ascontiguousarray(matrix).tobytes())
    return digest.hexdigest()


def summarize(values: Sequence[float | None]) -> dict:
    """Mean and (population) std over seeds, ignoring undefined (None/NaN) values; null if none defined."""
    clean = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return {"mean": None, "std": None, "values": [None if v is None else _finite(v) for v in values]}
    return {"mean": float(np.mean(clean)), "std": float(np.std(clean)), "values": [_finite(v) for v in values]}


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _jsonable(obj):
    """Numpy scalars/arrays → Python; NaN/inf → null (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _finite(obj)
    return obj


def new_results(task: str, dataset: dict, protocol: dict) -> dict:
    import importlib.metadata

    try:
        version = importlib.metadata.version("txfm")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "task": task,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "txfm_version": version,
        "dataset": dataset,
        "protocol": protocol,
        "models": {},
        "skipped": {},
    }


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _columns(results: dict) -> list[tuple[str, str]]:
    columns = TABLE_COLUMNS.get(results["task"], [])
    if not columns:
        seen = []
        for model in results["models"].values():
            seen += [k for k in model["metrics"] if k not in seen]
        columns = [(k, k) for k in seen]
    return columns


def _cell(metric: dict | None, digits: int = 2, with_std: bool = True) -> str:
    if not metric or metric.get("mean") is None:
        return "n/a"
    text = f"{metric['mean']:.{digits}f}"
    if with_std and metric.get("std") and len(metric.get("values", [])) > 1:
        text += f" ± {metric['std']:.{digits}f}"
    return text


def format_table(results: dict, with_std: bool = True) -> str:
    """The paper-layout Markdown table: one row per model (TxFM first), one column per metric."""
    columns = _columns(results)
    lines = ["| model | fitted on | " + " | ".join(h for _, h in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, model in results["models"].items():
        cells = [_cell(model["metrics"].get(key), 2, with_std) for key, _ in columns]
        lines.append(f"| {name} | {model.get('fitted_on', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_table(results: dict) -> str:
    """A plain-text table for a terminal (used by ``make demo``): means only, best value starred."""
    columns = _columns(results)
    names = list(results["models"])
    best = {}
    for key, _ in columns:
        values = [results["models"][n]["metrics"].get(key, {}).get("mean") for n in names]
        defined = [v for v in values if v is not None]
        best[key] = max(defined) if defined else None
    width = max([len(n) for n in names] + [5])
    header = f"{'model':<{width}} " + " ".join(f"{h:>10}" for _, h in columns)
    rows = [header, "-" * len(header)]
    for name in names:
        cells = []
        for key, _ in columns:
            mean = results["models"][name]["metrics"].get(key, {}).get("mean")
            mark = "*" if mean is not None and best[key] is not None and np.isclose(mean, best[key]) else " "
            cells.append(f"{'n/a':>9} " if mean is None else f"{mean:>9.2f}{mark}")
        rows.append(f"{name:<{width}} " + " ".join(cells))
    dataset = results["dataset"]
    title = f"{results['task']} benchmark on {dataset.get('name')} ({dataset['n_obs']} × {dataset['n_vars']}), seeds={len(results['protocol'].get('seeds', []))}"
    return title + "\n" + "\n".join(rows) + "\n(* best per column; metrics in % except ilisi)"


def results_markdown(results: dict) -> str:
    """The full ``results.md``: table, dataset, protocol notes, skipped baselines, extra tables."""
    dataset, protocol = results["dataset"], results["protocol"]
    parts = [
        f"# TxFM evaluation — {results['task']}",
        "",
        "_Generated from results.json by `evaluation.report`; do not edit by hand._",
        "",
        f"Dataset: `{dataset.get('name')}` — {dataset['n_obs']} obs × {dataset['n_vars']} vars"
        + (f", sha256 `{dataset['sha256'][:16]}…`" if dataset.get("sha256") else ""),
        "",
        f"Seeds: {protocol.get('seeds')}. Values are mean ± std over seeds; "
        + protocol.get("units", "metrics in %."),
        "",
        format_table(results),
        "",
    ]
    if results["task"] == "perturbation":
        parts += ["Best post-processing per task (chosen per model on the mean over seeds):", ""]
        parts += ["| model | " + " | ".join(k for k, _ in TABLE_COLUMNS["perturbation"][:-1]) + " |"]
        parts += ["|---|" + "---|" * 6]
        for name, model in results["models"].items():
            chosen = model.get("best_postprocessing", {})
            parts.append(f"| {name} | " + " | ".join(chosen.get(k, "") for k, _ in TABLE_COLUMNS["perturbation"][:-1]) + " |")
        parts.append("")
    recall_tables = {n: m["recall_per_database"] for n, m in results["models"].items() if m.get("recall_per_database")}
    if recall_tables:
        dbs = list(next(iter(recall_tables.values())))
        parts += ["Relationship recall per database (%):", "", "| model | " + " | ".join(dbs) + " |", "|---|" + "---|" * len(dbs)]
        for name, table in recall_tables.items():
            parts.append(f"| {name} | " + " | ".join(_cell(table.get(db)) for db in dbs) + " |")
        parts.append("")
    notes = protocol.get("notes", [])
    if notes:
        parts += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    if results.get("skipped"):
        parts += ["Skipped:", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()] + [""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_bars(results: dict, path: Path) -> Path | None:
    """Grouped bars: relationship recall per database, one bar per model."""
    tables = {n: m["recall_per_database"] for n, m in results["models"].items() if m.get("recall_per_database")}
    if not tables:
        return None
    plt = _pyplot()
    dbs = list(next(iter(tables.values())))
    width = 0.8 / len(tables)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(dbs) + 1), 4))
    for i, (name, table) in enumerate(tables.items()):
        means = [(table[db] or {}).get("mean") or 0.0 for db in dbs]
        stds = [(table[db] or {}).get("std") or 0.0 for db in dbs]
        ax.bar(np.arange(len(dbs)) + i * width, means, width, yerr=stds, label=name)
    chance = results["protocol"].get("recall_threshold", 0.05) * 200
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.0f} %)")
    ax.set_xticks(np.arange(len(dbs)) + 0.4 - width / 2, dbs)
    ax.set_ylabel("recall (%)")
    ax.set_title(f"Known-relationship recall — {results['dataset'].get('name')}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_recall_curves(results: dict, path: Path) -> Path | None:
    """Recall against the percentile threshold, one panel per database, one line per model."""
    curves = {n: m["recall_curve"] for n, m in results["models"].items() if m.get("recall_curve")}
    if not curves:
        return None
    plt = _pyplot()
    percentiles = np.array(results["protocol"]["percentiles"]) * 100
    dbs = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(dbs), figsize=(3.2 * len(dbs), 3.2), sharey=True, squeeze=False)
    for ax, db in zip(axes[0], dbs):
        for name, curve in curves.items():
            ax.plot(percentiles, [np.nan if v is None else v for v in curve[db]], marker="o", markersize=3, label=name)
        ax.plot(percentiles, 2 * percentiles, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_title(db)
        ax.set_xlabel("top/bottom percentile")
    axes[0][0].set_ylabel("recall (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pca_2d(emb: np.ndarray) -> np.ndarray:
    """First two principal components (the project has no UMAP dependency)."""
    from sklearn.decomposition import PCA

    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape[1] < 2:
        return np.column_stack([emb[:, 0] if emb.shape[1] else np.zeros(len(emb)), np.zeros(len(emb))])
    return PCA(n_components=2, svd_solver="randomized", random_state=0).fit_transform(emb)


def plot_scatter(emb: np.ndarray, colours: dict[str, Sequence], title: str, path: Path, max_points: int = 20_000) -> Path:
    """2-D PCA scatter of an embedding, one panel per colouring (e.g. label and batch)."""
    plt = _pyplot()
    rng = np.random.default_rng(0)
    rows = np.arange(len(emb)) if len(emb) <= max_points else rng.choice(len(emb), max_points, replace=False)
    xy = pca_2d(np.asarray(emb)[rows])
    fig, axes = plt.subplots(1, len(colours), figsize=(5.5 * len(colours), 4.5), squeeze=False)
    for ax, (key, values) in zip(axes[0], colours.items()):
        values = np.asarray(values).astype(str)[rows]
        categories = np.unique(values)
        cmap = plt.get_cmap("tab20", max(len(categories), 1))
        for i, cat in enumerate(categories):
            mask = values == cat
            ax.scatter(xy[mask, 0], xy[mask, 1], s=4, color=cmap(i), label=cat if len(categories) <= 20 else None)
        ax.set_title(f"{title} — {key}")
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        if len(categories) <= 20:
            ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: str | os.PathLike, figures: bool = True) -> dict[str, Path]:
    """Write results.json, results.md (generated from the JSON) and PNG figures into ``out_dir``.

    Embeddings kept by a benchmark under the private key ``_embeddings`` (with ``_colours``) are
    drawn as PCA scatters and never written to JSON.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    clean = _jsonable(results)
    written["json"] = out / "results.json"
    written["json"].write_text(json.dumps(clean, indent=2) + "\n")
    reloaded = json.loads(written["json"].read_text())
    written["markdown"] = out / "results.md"
    written["markdown"].write_text(results_markdown(reloaded))
    if figures:
        if path := plot_recall_bars(reloaded, out / "recall_by_database.png"):
            written["recall_bars"] = path
        if path := plot_recall_curves(reloaded, out / "recall_curves.png"):
            written["recall_curves"] = path
        colours = results.get("_colours", {})
        for name, emb in results.get("_embeddings", {}).items():
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            written[f"scatter_{name}"] = plot_scatter(emb, colours, name, out / f"scatter_{safe}.png")
    return written


def load_results(path: str | os.PathLike) -> dict:
    path = Path(path)
    return json.loads((path / "results.json" if path.is_dir() else path).read_text())
