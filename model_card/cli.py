"""``txfm push`` (publish a model or dataset folder) and ``txfm card`` (regenerate a model card)."""

from __future__ import annotations

import argparse
import json

from .cards import write_model_card
from .push import PushError, push


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help="Publish a TxFM checkpoint or corpus to the Hugging Face Hub")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="checkpoint folder (weights, config, processor, code, card)")
    what.add_argument("--dataset", help="corpus folder written by `txfm build-corpus`")
    parser.add_argument("--repo-id", required=True, help="e.g. your-name/txfm-s")
    parser.add_argument("--staging", default=None, help="where to assemble the upload (default: beside the source)")
    parser.add_argument("--dry-run", action="store_true", help="assemble and validate, do not upload")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / the saved login)")
    parser.set_defaults(func=_run_push)

    card = subparsers.add_parser("card", help="(Re)generate a checkpoint's model card from its config and results")
    card.add_argument("--model", required=True, help="checkpoint folder")
    card.add_argument("--results", nargs="*", default=[], help="results.json files or folders from `txfm evaluate`")
    card.add_argument("--repo-id", default=None)
    card.set_defaults(func=_run_card)


def _run_push(args: argparse.Namespace) -> int:
    kind, source = ("model", args.model) if args.model else ("dataset", args.dataset)
    try:
        report = push(kind, source, args.repo_id, args.staging, args.dry_run, args.token, args.private)
    except PushError as error:
        print(f"txfm push: {error}")
        return 2
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(report['files'])} files from {report['folder']} to {report['repo_id']} ({kind}):")
    for name in report["files"]:
        print(f"  {name}")
    print("checks:", json.dumps(report["checks"].get("loaded") or {"rows": report["checks"].get("rows")}))
    return 0


def _run_card(args: argparse.Namespace) -> int:
    path = write_model_card(args.model, args.results, repo_id=args.repo_id)
    print(f"wrote {path}")
    return 0
