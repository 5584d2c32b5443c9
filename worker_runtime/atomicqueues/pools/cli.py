"""`aq up POOL.yaml` and `aq demo`: pools on one machine.

Reached by name from `atomicqueues.cli` (the `aq` entry point, above every layer), so a worker
image never imports this layer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from ..cliargs import Parser
from ..client import Client
from ..metrics import serve
from ..registry import load_registry
from .demo import DemoOptions, demo
from .embedded import EmbeddedRedis
from .local import LocalPool, settings_for
from .spec import Pool, load_pool

log = logging.getLogger(__name__)


def redis_url_for(pool: Pool) -> str | None:
    """AQ_REDIS_URL, else the manifest's url; None means: start an embedded Redis."""
    url = os.environ.get("AQ_REDIS_URL") or pool.spec.redis.url
    if url is None and pool.spec.redis.secret_ref is not None:
        log.info("spec.redis.secretRef is for Kubernetes; locally set AQ_REDIS_URL instead")
    return url


async def run_pool(pool: Pool, redis_url: str, stop: asyncio.Event) -> None:
    client = await Client.connect(settings_for(pool, redis_url))
    try:
        await LocalPool(pool, client).run(stop)
    finally:
        await client.close()


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def up(path: str, metrics_port: int | None = None) -> int:
    pool = load_pool(path)
    # The workers import the handlers from the same working directory: one that cannot be
    # imported is refused here, once, rather than in every worker started for work.
    load_registry(pool.spec.handlers)
    stop = asyncio.Event()
    stop_on_signals(stop)
    if metrics_port is not None:
        serve(metrics_port)  # the pool's health gauges (health.py) and nothing per entity
    url = redis_url_for(pool)
    name = pool.metadata.name
    if url is not None:
        log.info("pool %s: entity type %s on %s; Ctrl-C stops", name, pool.spec.entity_type, url)
        await run_pool(pool, url, stop)
        return 0
    with EmbeddedRedis() as redis:
        log.info(
            "pool %s: entity type %s on an embedded Redis at %s (set AQ_REDIS_URL to "
            "use yours); Ctrl-C stops",
            name,
            pool.spec.entity_type,
            redis.url,
        )
        await run_pool(pool, redis.url, stop)
    return 0


def main(argv: Sequence[str]) -> int:
    parser = Parser(prog="aq")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("up", help="run a pool locally until Ctrl-C")
    p.add_argument("manifest", help="EntityWorkerPool YAML")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve the pool's Prometheus metrics (jobs waiting, oldest waiting job, ...) here",
    )
    d = sub.add_parser("demo", help="the demo: a local pool, jobs, a killed worker, a check")
    d.add_argument("--entities", type=int, default=36)
    d.add_argument("--jobs", type=int, default=12, help="jobs per entity")
    d.add_argument("--no-chaos", action="store_true", help="do not kill a worker mid-job")
    d.add_argument("--job-seconds", type=float, default=0.05, help="how long each job works")
    d.add_argument("--plain", action="store_true", help="no live table (for logs and CI)")
    args = parser.parse_args(list(argv))
    if args.command == "up":
        return asyncio.run(up(args.manifest, args.metrics_port))
    options = DemoOptions(args.entities, args.jobs, not args.no_chaos, args.job_seconds, args.plain)
    return asyncio.run(demo(options))
