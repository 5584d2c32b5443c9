"""The dashboard's web application: server-rendered pages, a few JSON actions behind a token.

Why this shape: pages are rendered on the server by Jinja2 with autoescaping on for every
template, so an entity id (a user's string: `<script>`, quotes, 4 KiB of unicode) is escaped in
one place whatever page shows it; links are built by `href`, which URL-encodes every parameter.
The one script (static/dashboard.js, no build step) asks for the page's live part again every
few seconds (the same template's `live` block) and sends actions. A Content-Security-Policy
allows no inline script, as a second wall behind the escaping.

Actions need the token given to `aq dashboard` (`--token` or AQ_DASHBOARD_TOKEN) in an
`Authorization: Bearer` header: a header a cross-site form cannot send, so no CSRF token is
needed. Without a configured token the server refuses every action and the page is read-only.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from ..client import Client
from ..dead_letters import DeadLetters
from ..errors import AtomicQueuesError, InvalidInput, JobNotFound, RedisUnavailable
from ..index_reads import IndexReads
from ..jobs import Job
from ..keys import check_entity_id, check_entity_type
from ..locks import Locks
from ..pools import health
from ..presence import Presence
from ..queues import Queues

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PARTIAL_HEADER = "X-AQ-Partial"
PAGE_SIZE = 50
JOBS_SHOWN = 50
DEAD_SHOWN = 20
LOCKS_SHOWN = 500
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
UNFINISHED = ("waiting", "delayed", "active", "retrying")
_STATUS: dict[type[AtomicQueuesError], int] = {
    InvalidInput: 400,
    JobNotFound: 404,
    RedisUnavailable: 503,
}
"""The HTTP status of the errors a page or an action can meet (others: 500)."""


@dataclass(frozen=True)
class Config:
    token: str | None
    """Actions are refused unless a request carries it; None: the dashboard is read-only."""
    refresh: float = 2.0
    """Seconds between live updates of a page."""


def href(path: str, **params: object) -> str:
    """A link with every parameter URL-encoded (None: left out)."""
    query = urlencode({k: str(v) for k, v in params.items() if v is not None})
    return f"{path}?{query}" if query else path


def when(seconds: float | None, now: float) -> str:
    """`12:01:03 (5s ago)` in UTC, or `in 4s` for a time to come."""
    if seconds is None:
        return ""
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    delta = seconds - now
    span = abs(delta)
    if span < 120:
        amount = f"{span:.0f}s"
    elif span < 7200:
        amount = f"{span / 60:.0f}m"
    else:
        amount = f"{span / 3600:.1f}h"
    return f"{stamp} ({'in ' + amount if delta > 0.5 else amount + ' ago'})"


def pretty_json(text: str | None) -> str:
    if text in (None, ""):
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(href=href, when=when, pretty_json=pretty_json)
    # The macros as a global, so that a block rendered alone (a live update) has them too.
    env.globals["m"] = env.get_template("macros.html").module
    return env


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Action = Callable[[dict[str, str | None]], Awaitable[str]]


class Dashboard:
    """The pages and actions over one client."""

    def __init__(self, client: Client, config: Config) -> None:
        self.client = client
        self.config = config
        self.queues = Queues(client)
        self.index = IndexReads(client)
        self.dead_letters = DeadLetters(client)
        self.presence = Presence(client)
        self.locks = Locks(client)
        self.templates = _environment()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/", self.overview)
        r.add_get("/types/{entity_type}", self.entity_type)
        r.add_get("/types/{entity_type}/entity", self.entity)
        r.add_get("/types/{entity_type}/job", self.job)
        r.add_get("/workers", self.workers)
        r.add_get("/locks", self.locks_page)
        r.add_get("/favicon.ico", self.no_icon)
        r.add_post("/api/{action}", self.action)
        r.add_static("/static", HERE / "static", name="static", append_version=True)
        app.on_response_prepare.append(self._headers)
        return app

    # --- rendering ------------------------------------------------------------------------
    async def render(self, request: web.Request, name: str, **values: Any) -> web.Response:
        template = self.templates.get_template(name)
        values.update(
            now=await self.presence.server_time(),
            actions=self.config.token is not None,
            refresh_ms=int(self.config.refresh * 1000),
            static=lambda path: str(request.app.router["static"].url_for(filename=path)),
            request_path=request.path_qs,
        )
        values.setdefault("title", "")
        if request.headers.get(PARTIAL_HEADER) == "1":
            context = template.new_context(values)
            text = "".join(template.blocks["live"](context))
        else:
            text = template.render(values)
        return web.Response(text=text, content_type="text/html", charset="utf-8")

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except AtomicQueuesError as exc:
            status = next((c for k, c in _STATUS.items() if isinstance(exc, k)), 500)
            if request.path.startswith("/api/"):
                return web.json_response({"ok": False, "message": str(exc)}, status=status)
            text = self.templates.get_template("error.html").render(
                message=str(exc), title="error", status=status
            )
            return web.Response(text=text, status=status, content_type="text/html")

    # --- pages ----------------------------------------------------------------------------
    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def overview(self, request: web.Request) -> web.Response:
        types = await self.index.entity_types()
        seen = await self.presence.workers_seen()
        rows = []
        for t in types:
            rows.append(
                {
                    "name": t,
                    "counts": await self.index.counts(t),
                    "summary": await self.queues.summary(t),
                    "workers": sum(1 for w, _ in seen if w.entity_type == t),
                    "leases": sum(len(w.entities) for w, _ in seen if w.entity_type == t),
                }
            )
        pools = await health.pools(self.client, await self.presence.server_time())
        return await self.render(
            request, "overview.html", types=rows, workers=len(seen), pools=pools, title="overview"
        )

    def _type_of(self, request: web.Request) -> str:
        return check_entity_type(request.match_info["entity_type"])

    async def entity_type(self, request: web.Request) -> web.Response:
        entity_type = self._type_of(request)
        query = request.query.get("q", "")
        cursor = request.query.get("cursor")
        page = None
        found = None
        if query:
            found = await self.queues.search(entity_type, query, PAGE_SIZE)
        else:
            page = await self.queues.entities_page(entity_type, cursor, PAGE_SIZE)
        summary = await self.queues.summary(entity_type)
        dead = await self.queues.dead_letters(entity_type, DEAD_SHOWN)
        return await self.render(
            request,
            "type.html",
            entity_type=entity_type,
            query=query,
            cursor=cursor,
            page=page,
            found=found,
            summary=summary,
            counts=await self.index.counts(entity_type),
            dead=dead,
            title=entity_type,
        )

    def _entity_of(self, request: web.Request) -> tuple[str, str]:
        entity_type = self._type_of(request)
        entity_id = check_entity_id(request.query.get("id", ""))
        return entity_type, entity_id

    async def entity(self, request: web.Request) -> web.Response:
        entity_type, entity_id = self._entity_of(request)
        queue = await self.queues.entity(entity_type, entity_id, JOBS_SHOWN)
        workers = await self.presence.entity_workers(entity_type, entity_id)
        return await self.render(
            request,
            "entity.html",
            q=queue,
            workers=workers,
            title=f"{entity_type} {entity_id}",
        )

    async def job(self, request: web.Request) -> web.Response:
        entity_type = self._type_of(request)
        entity_id = check_entity_id(request.query.get("entity", ""))
        job_id = request.query.get("id", "")
        if not job_id:
            raise InvalidInput("which job? (the id parameter is missing)")
        job = await self.client.job(job_id, entity=(entity_type, entity_id))
        queue = None
        if job.state == "active":
            queue = await self.queues.entity(entity_type, entity_id, JOBS_SHOWN)
        running = [a for a in (queue.active if queue else []) if a.job.id == job.id]
        return await self.render(
            request,
            "job.html",
            job=job,
            running=running[0] if running else None,
            unfinished=job.state in UNFINISHED,
            title=f"job {job_id}",
        )

    async def workers(self, request: web.Request) -> web.Response:
        seen = await self.presence.workers_seen()
        seen.sort(key=lambda ws: (ws[0].entity_type, ws[0].node, ws[0].name))
        return await self.render(request, "workers.html", workers=seen, title="workers")

    async def locks_page(self, request: web.Request) -> web.Response:
        held = await self.locks.held()
        return await self.render(
            request,
            "locks.html",
            locks=held[:LOCKS_SHOWN],
            more=max(0, len(held) - LOCKS_SHOWN),
            title="locks",
        )

    # --- actions --------------------------------------------------------------------------
    def _authorised(self, request: web.Request) -> str | None:
        """Why the request may not act, or None when it may."""
        if self.config.token is None:
            return "this dashboard is read-only: start it with --token to allow actions"
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.config.token.encode()
        ):
            return "the token is missing or wrong"
        return None

    async def action(self, request: web.Request) -> web.Response:
        if (refused := self._authorised(request)) is not None:
            return web.json_response({"ok": False, "message": refused}, status=403)
        name = request.match_info["action"]
        act = self._actions().get(name)
        if act is None:
            return web.json_response({"ok": False, "message": f"no action {name!r}"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(
            isinstance(v, str) or v is None for v in body.values()
        ):
            raise InvalidInput("the request body must be a JSON object of strings")
        message = await act(body)
        log.info("dashboard action %s %s: %s", name, json.dumps(body), message)
        return web.json_response({"ok": True, "message": message})

    def _actions(self) -> dict[str, Action]:
        found: dict[str, Action] = {
            "check": self._check,
            "dlq-requeue": self._dlq_requeue,
            "dlq-purge": self._dlq_purge,
            "cancel": self._cancel,
            "close-worker": self._close_worker,
            "pause": self._pause,
            "resume": self._resume,
        }
        return found

    async def _check(self, body: dict[str, str | None]) -> str:
        return "actions unlocked"

    @staticmethod
    def _required(body: dict[str, str | None], name: str) -> str:
        value = body.get(name)
        if not value:
            raise InvalidInput(f"the action needs {name!r}")
        return value

    def _scope(self, body: dict[str, str | None]) -> tuple[str, str | None]:
        entity_type = check_entity_type(self._required(body, "type"))
        entity_id = body.get("entity") or None
        return entity_type, None if entity_id is None else check_entity_id(entity_id)

    async def _dlq_requeue(self, body: dict[str, str | None]) -> str:
        entity_type, entity_id = self._scope(body)
        job = body.get("job")
        n = await self.dead_letters.requeue(entity_type, entity_id, [job] if job else None)
        return f"{n} dead job(s) requeued"

    async def _dlq_purge(self, body: dict[str, str | None]) -> str:
        entity_type, entity_id = self._scope(body)
        job = body.get("job")
        n = await self.dead_letters.purge(entity_type, entity_id, [job] if job else None)
        return f"{n} dead job(s) purged"

    async def _cancel(self, body: dict[str, str | None]) -> str:
        entity_type = check_entity_type(self._required(body, "type"))
        entity_id = check_entity_id(self._required(body, "entity"))
        job_id = self._required(body, "job")
        if await self.client.cancel(job_id, entity=(entity_type, entity_id)):
            return "job cancelled"
        try:
            job: Job | None = await self.client.job(job_id, entity=(entity_type, entity_id))
        except JobNotFound:
            job = None
        return f"not cancelled: the job is {job.state if job else 'gone'}"

    async def _close_worker(self, body: dict[str, str | None]) -> str:
        name = self._required(body, "name")
        if not await self.presence.worker_exists(name):
            return "no such worker (it has ended already)"
        await self.presence.close_worker(name)
        return "asked the worker to close (it finishes its job first)"

    async def _pause(self, body: dict[str, str | None]) -> str:
        entity_type, entity_id = self._scope(body)
        await self.client.pause(entity_type, entity_id)
        return "paused"

    async def _resume(self, body: dict[str, str | None]) -> str:
        entity_type, entity_id = self._scope(body)
        await self.client.resume(entity_type, entity_id)
        return "resumed"
