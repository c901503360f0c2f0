"""`modelpilot`: validate ModelDeployments offline, print the CRD, and (with a cluster)
look at and steer rollouts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from .. import __version__
from ..api.v1alpha1 import KIND, ModelDeployment
from ..crdgen import render_crd
from ..k8s.client import NoClusterError
from . import operator as operator_cli
from . import rollout as rollout_verbs


def _validate(paths: Sequence[Path], show_defaults: bool) -> int:
    failed = 0
    for path in paths:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict) or doc.get("kind") != KIND:
                continue
            name = doc.get("metadata", {}).get("name", "?")
            try:
                md = ModelDeployment.model_validate(doc)
            except ValidationError as err:
                failed += 1
                print(f"{path}: {KIND} {name} is invalid:", file=sys.stderr)
                for e in err.errors():
                    loc = ".".join(str(p) for p in e["loc"])
                    print(f"  {loc}: {e['msg']}", file=sys.stderr)
                continue
            print(f"{path}: {KIND} {name} is valid")
            if show_defaults:
                print(yaml.safe_dump(md.to_wire(), sort_keys=False), end="")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `modelpilot` command."""
    parser = argparse.ArgumentParser(prog="modelpilot", description=__doc__)
    parser.add_argument("--version", action="version", version=f"modelpilot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check ModelDeployment manifests offline")
    val.add_argument("files", nargs="+", type=Path, help="YAML files, or - for stdin")
    val.add_argument("--show-defaults", action="store_true", help="print them with defaults")
    sub.add_parser("crd", help="print the ModelDeployment CRD")
    operator_cli.add_parser(sub)
    rollout_verbs.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `modelpilot` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.files, args.show_defaults)
    if args.command == "crd":
        print(render_crd(), end="")
        return 0
    if args.command == "operator":
        return operator_cli.run(args)
    if args.command in ("status", *rollout_verbs.ACTIONS):
        try:
            return rollout_verbs.run(args)
        except NoClusterError as err:
            print(f"modelpilot: {err}", file=sys.stderr)
            return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
