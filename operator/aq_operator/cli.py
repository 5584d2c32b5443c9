"""`aq crd` and `aq operator`, reached lazily from `atomicqueues.cli` as `main([command, ...])`.

Errors a person can cause are `AtomicQueuesError`s: `atomicqueues.cli` prints them as one line.
kopf is imported only by `aq operator`, so `aq crd` works without the operator extra; a
missing extra is named in one line by `atomicqueues.cli` (`atomicqueues.extras`).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from atomicqueues.cliargs import Parser
from atomicqueues.errors import AtomicQueuesError

from .crd import CHART_CRD_FILE, CRD_FILE, CRD_NAME, crd_yaml, write_crd


def cmd_crd(write: bool) -> int:
    if write:
        written = write_crd()
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
        if not written:
            print(f"unchanged: {CRD_FILE}, {CHART_CRD_FILE}", file=sys.stderr)
    else:
        sys.stdout.write(crd_yaml())
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import replace

    import kopf

    from .config import Config
    from .endpoints import parse_listen
    from .leader import LeaderElection, LeadershipLost, LeaseTiming
    from .login import default_login
    from .runner import Operator

    if args.listen:
        parse_listen(args.listen)  # a bad address is one line before anything starts
    timing = LeaseTiming.scaled(args.lease_duration)
    config = Config.from_env()
    if args.worker_image:
        config = replace(config, worker_image=args.worker_image)
    try:
        found = default_login(settings=kopf.OperatorSettings(), logger=logging.getLogger(__name__))
    except kopf.LoginError as exc:
        raise AtomicQueuesError(str(exc)) from None
    if found is None:
        raise AtomicQueuesError(
            "no Kubernetes credentials: the `kubernetes` package is missing"
            " (pip install 'atomicqueues[operator]')"
        )
    operator = Operator(config)
    operator.connection = found
    leader = None
    if args.leader_elect:
        leader = LeaderElection(
            operator.kube,
            args.lease_namespace or _own_namespace(),
            args.lease_name,
            os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            timing,
        )
    try:
        asyncio.run(
            operator.run(namespaces=args.namespaces or (), leader=leader, listen=args.listen)
        )
    except kopf.LoginError as exc:
        raise AtomicQueuesError(f"cannot log in to Kubernetes: {exc}") from None
    except LeadershipLost as exc:
        raise AtomicQueuesError(f"stepped down: {exc}") from None
    return 0


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    """The namespace this operator runs in: $POD_NAMESPACE, the service account's, or default."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


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
    p = sub.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Reconcile every EntityWorkerPool: worker pods for the entities with work.",
    )
    p.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        help="serve pools of this namespace only (repeat; default: the whole cluster)",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        help="run only while holding a Lease, so one of several replicas is active",
    )
    p.add_argument(
        "--lease-name",
        default="atomicqueues-operator",
        metavar="NAME",
        help="the Lease for --leader-elect (default %(default)s)",
    )
    p.add_argument(
        "--lease-namespace",
        metavar="NS",
        help="namespace of the Lease (default: $POD_NAMESPACE, else the service account's)",
    )
    p.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long a silent leader keeps the others waiting (default %(default)g; the"
        " leader renews every 2/15 of it and steps down after 2/3 of it without renewing)",
    )
    p.add_argument(
        "--listen",
        default="0.0.0.0:8080",
        metavar="HOST:PORT",
        help="serve /healthz, /readyz and /metrics here (default %(default)s; empty: none)",
    )
    p.add_argument("--worker-image", help="image of pools without spec.image ($AQ_WORKER_IMAGE)")
    args = parser.parse_args(list(argv))
    if args.command == "crd":
        return cmd_crd(args.write)
    return cmd_operator(args)
