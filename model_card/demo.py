"""``make demo``: the whole user path, end to end, on real data that ships inside our dependencies.

1. build a corpus with ``txfm build-corpus --source local`` from package-shipped files (scirpy's
   wu2020 T cells, celltypist's sample cells, inmoose's airway and rnanorm's GTEx lung bulk samples);
   scanpy's pbmc68k PBMCs are **held out** of pretraining — they are the evaluation data;
2. pretrain ``txfm-tiny`` with ``accelerate launch training/pretrain.py``;
3. evaluate it against the baselines on pbmc68k cell types with ``txfm evaluate celltype``;
4. write the model card from the config, the training summary and ``results.json``;
5. ``txfm push --dry-run``: assemble the Hub folder and load it back with
   ``AutoModel.from_pretrained(..., trust_remote_code=True)`` in a fresh process;
6. print where everything is and the headline numbers.

Every stage runs the same command a user would type, as a subprocess, with its progress bars.
``--quick`` (used by the test suite) trains for a few steps with one evaluation seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_stage(title: str, command: list[str], log: Path) -> float:
    """Run one stage, streaming its output to the terminal and to ``log``; stop the demo if it fails."""
    print(f"\n=== {title}\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"\n=== {title}\n$ {shlex.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in process.stdout:
            sys.stdout.write(line)
            handle.write(line)
        code = process.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"demo stage '{title}' failed (exit {code}); the full log is {log}")
    print(f"--- {title}: done in {seconds:.0f} s", flush=True)
    return seconds


def txfm(*args: str) -> list[str]:
    return [sys.executable, "-m", "modeling_txfm.cli", *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_card.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    parser.add_argument("--quick", action="store_true", help="a few training steps and one seed (CI)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the number of training steps")
    parser.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default 3, quick 1)")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    inputs, corpus, model, evaluation = out / "inputs", out / "corpus", out / "model", out / "eval"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    log.write_text("")
    seeds = args.seeds or (1 if args.quick else 3)
    max_steps = args.max_steps or (12 if args.quick else None)
    timings: dict[str, float] = {}

    from dataset_builder.examples import EXAMPLE_BATCH_KEYS, EXAMPLE_CELL_TYPE_KEYS, example_inputs
    from modeling_txfm import example_data

    training_files = [str(p) for p in example_inputs(inputs, include_pbmc68k=False)]
    pbmc = inputs / "pbmc68k_counts.h5ad"
    if not pbmc.exists():
        inputs.mkdir(parents=True, exist_ok=True)
        example_data.pbmc68k().write_h5ad(pbmc)

    timings["corpus"] = run_stage(
        "1/5 build the pretraining corpus from package-shipped data (pbmc68k held out)",
        txfm("build-corpus", "--source", "local", "--data-dir", *training_files, "--out", str(corpus),
             "--batch-key", EXAMPLE_BATCH_KEYS, "--cell-type-key", EXAMPLE_CELL_TYPE_KEYS,
             "--batch-pattern", "^(GTEX-[^-]+)"),  # GTEx samples carry their donor in the sample id
        log,
    )
    pretrain = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--dynamo_backend", "no", str(REPO / "training" / "pretrain.py"),
                "--config", str(REPO / "training" / "configs" / "txfm-tiny.yaml"),
                "--corpus", str(corpus), "--output_dir", str(model)]
    if max_steps:
        pretrain += ["--max_steps", str(max_steps)]
    timings["pretrain"] = run_stage("2/5 pretrain txfm-tiny with accelerate launch", pretrain, log)
    timings["evaluate"] = run_stage(
        "3/5 evaluate TxFM against the baselines on held-out pbmc68k cell types",
        txfm("evaluate", "celltype", "--model", str(model), "--data", str(pbmc), "--out", str(evaluation),
             "--seeds", str(seeds), "--model-name", "TxFM-tiny"),
        log,
    )
    timings["card"] = run_stage(
        "4/5 write the model card from config, training summary and results.json",
        txfm("card", "--model", str(model), "--results", str(evaluation / "results.json"), "--repo-id", "txfm/txfm-tiny-demo"),
        log,
    )
    timings["push"] = run_stage(
        "5/5 assemble the Hub upload (dry run) and load it back with AutoModel.from_pretrained",
        txfm("push", "--model", str(model), "--repo-id", "txfm/txfm-tiny-demo", "--staging", str(out / "hub-model"),
             "--dry-run"),
        log,
    )
    print_summary(out, corpus, model, evaluation, timings)
    return 0


def print_summary(out: Path, corpus: Path, model: Path, evaluation: Path, timings: dict[str, float]) -> None:
    from evaluation.report import headline_table, load_results

    results = load_results(evaluation)
    manifest = json.loads((corpus / "manifest.json").read_text()) if (corpus / "manifest.json").exists() else {}
    summary = json.loads((model / "training_summary.json").read_text()) if (model / "training_summary.json").exists() else {}
    print("\n" + "=" * 78)
    print("TxFM demo finished. Everything is under", out)
    print(f"  corpus      {corpus}  {json.dumps(manifest.get('samples', {}))} samples, {manifest.get('n_genes', '?')} genes")
    print(f"  checkpoint  {model}  (model card: {model / 'README.md'})")
    print(f"  evaluation  {evaluation}  (results.json, results.md, figures)")
    print(f"  hub folder  {out / 'hub-model'}  (what `txfm push` would upload)")
    print(f"  log         {out / 'demo.log'}")
    if summary:
        keys = ("steps", "final_train_loss", "final_validation_loss", "validation_masked_pearson")
        print("  training    " + ", ".join(f"{k.replace('_', ' ')} {summary[k]:.4g}" if isinstance(summary.get(k), float)
                                         else f"{k.replace('_', ' ')} {summary.get(k)}" for k in keys if k in summary))
    print("  time        " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print()
    print(headline_table(results))
    print(
        "\nRead this honestly: a tiny model pretrained for a minute on ~800 cells is a pipeline check, not the\n"
        "paper's model. Log-normalised counts and PCA are strong baselines; the paper-scale result needs the\n"
        "DiverseRNA-1.4M corpus and GPUs (see README)."
    )


if __name__ == "__main__":
    sys.exit(main())
