"""The ``txfm`` command line: ``txfm embed``, ``txfm build-corpus``, ``txfm evaluate``, ``txfm push``.

Each subcommand lives next to the code it drives: a module exposing ``register(subparsers)`` that
adds its parser and sets ``func`` (called with the parsed ``argparse.Namespace``, returns an exit
code). Modules are imported only when present, so the core package works without the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "modeling_txfm.embedding",  # txfm embed
    "dataset_builder.cli",  # txfm build-corpus
    "evaluation.cli",  # txfm evaluate
    "model_card.cli",  # txfm push
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txfm", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and name.startswith(error.name):
                continue  # that part of the project is not there
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
