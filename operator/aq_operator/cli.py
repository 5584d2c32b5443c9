"""`aq crd` and `aq operator`, reached lazily from `atomicqueues.cli` as `main([command, ...])`.

Errors a person can cause are `AtomicQueuesError`s: `atomicqueues.cli` prints them as one line.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from atomicqueues.cli import Parser
from atomicqueues.errors import AtomicQueuesError

from .crd import CRD_FILE, CRD_NAME, crd_yaml, write_crd


def cmd_crd(write: bool) -> int:
    if importlib.util.find_spec("yaml") is None:
        raise AtomicQueuesError("`aq crd` needs pyyaml: pip install 'atomicqueues[local]'")
    if write:
        path, changed = write_crd()
        print(f"{'wrote' if changed else 'unchanged:'} {path}", file=sys.stderr)
    else:
        sys.stdout.write(crd_yaml())
    return 0


def main(argv: Sequence[str]) -> int:
    parser = Parser(prog="aq")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser(
        "crd",
        help=f"print the {CRD_NAME} CustomResourceDefinition (YAML)",
        description="The EntityWorkerPool CRD, generated from the pool spec model.",
    )
    p.add_argument(
        "--write", action="store_true", help=f"write {CRD_FILE} of this source checkout instead"
    )
    sub.add_parser("operator", help="run the Kubernetes operator")
    args = parser.parse_args(list(argv))
    if args.command == "crd":
        return cmd_crd(args.write)
    raise AtomicQueuesError("`aq operator` is not built yet: only `aq crd` is, so far")
