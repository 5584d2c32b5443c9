"""`aq dashboard`: serve the web dashboard until Ctrl-C.

Reached lazily from `atomicqueues.cli`, so only a machine with the `dashboard` extra imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from aiohttp import web

from ..cliargs import Parser
from ..client import Client
from ..config import Settings
from ..errors import ConfigError
from .app import Config, Dashboard

log = logging.getLogger(__name__)

TOKEN_ENV = "AQ_DASHBOARD_TOKEN"


def build_parser() -> Parser:
    parser = Parser(
        prog="aq dashboard",
        description="Serve a web page over the deployment's Redis: entity types, entities with "
        "work, queues, jobs, workers, locks. Read-only unless a token is set; actions (requeue, "
        "purge, cancel, close a worker) then need it, entered in the page.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=8181, help="port (default %(default)s)")
    parser.add_argument(
        "--token",
        help=f"allow actions to whoever gives this token (default: ${TOKEN_ENV}; prefer the "
        "variable: a command line is visible to other users of the machine)",
    )
    parser.add_argument(
        "--refresh",
        type=float,
        default=2.0,
        help="seconds between live updates of a page (default %(default)s; 0: none)",
    )
    return parser


async def serve(settings: Settings, config: Config, host: str, port: int) -> None:
    client = await Client.connect(settings)
    try:
        await client.call(client.redis.ping)  # a clear line now, not on the first page
        runner = web.AppRunner(Dashboard(client, config).app(), access_log=None)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            mode = "actions need the token" if config.token else "read-only (no token)"
            print(f"aq dashboard: http://{host}:{port}/ ({mode})", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        await client.close()


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv)[1:])
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: expected 1-65535")
    if args.refresh < 0:
        raise ConfigError("--refresh must not be negative")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    config = Config(token=token or None, refresh=args.refresh)
    asyncio.run(serve(Settings.from_env(), config, args.host, args.port))
    return 0
