"""The Kubernetes backend: carries out the reconciler's plan for one pool with worker pods.

It mirrors `atomicqueues.pools.local.LocalPool`, with pods for processes. One `KubePool` runs
per EntityWorkerPool (in a task of its own, so one pass at a time per pool). A pass reads the
entities with work (`IndexReads.work_index`) and the pool's pods, asks `reconciler.plan` what to do,
and does it: start -> create a pod; close -> the close signal through Redis and an annotation,
then delete the pod once its worker has deregistered or the grace has passed; forget -> delete
an ended pod. A pass runs when the "entity has work" event arrives (milliseconds), when one of
the pool's pods or its spec changes, and at least every resync interval; a missed event only
delays. A separate task sweeps expired leases every heartbeat interval, so the job of a killed
pod comes back even when no worker of the type is alive; another fires the type's scheduled
jobs (every replica may: each tick fires once).

The pool never touches Redis keys itself (runtime calls only), and deleting it leaves Redis as
it is: its pods go by garbage collection (owner references).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from atomicqueues.aio import cancel_and_wait, wait_any
from atomicqueues.client import Client
from atomicqueues.config import Settings
from atomicqueues.connection import describe
from atomicqueues.errors import AtomicQueuesError, RedisUnavailable
from atomicqueues.index_reads import IndexReads
from atomicqueues.pools import health
from atomicqueues.pools.limits import StartLimiter
from atomicqueues.pools.names import random_suffix
from atomicqueues.pools.reconciler import (
    PACKED,
    Action,
    Backoff,
    CloseWorker,
    ForgetWorker,
    Plan,
    StartPacked,
    StartWorker,
    desired_workers,
    plan,
)
from atomicqueues.pools.spec import API_GROUP, API_VERSION, URL_PASSWORD_RE, PoolSpec, SecretKeyRef
from atomicqueues.pools.watch import sweep_leases, tick_schedules, wake_on_work
from atomicqueues.presence import Presence

from . import metrics, pods, status
from .config import Config
from .crd import PLURAL
from .kube import Body, Kube, KubeError, SecretNotFound
from .status import Observation, Problem

log = logging.getLogger(__name__)

IMAGE_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
)


class NotLeading(Exception):
    """This replica may have lost the leader Lease: it must change nothing."""


class Blocked(Exception):
    """The pool cannot work now; the problem goes into its conditions."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@dataclass(frozen=True)
class RedisTarget:
    url: str
    """What the operator connects to."""
    for_pods: SecretKeyRef | str
    """What the pods get: the Secret itself, or the URL when it carries no password."""


@dataclass
class _Pass:
    """What one reconcile pass carries out its actions with, and what they leave."""

    spec: PoolSpec
    target: RedisTarget
    by_name: dict[str, Body]
    """The pool's pods at the start of the pass, by name."""
    work_since: Mapping[str, float]
    """When each entity with work got it (for the work-to-pod metric)."""
    problems: list[Problem] = field(default_factory=list)
    done: Counter[str] = field(default_factory=Counter)
    """How many pods were started, closed, found failed or ended."""
    closed_now: dict[str, float] = field(default_factory=dict)
    """Pods asked to close in this pass, and when."""


class KubePool:
    """Runs one EntityWorkerPool with pods. `body` is the latest the pool's watch events gave."""

    def __init__(
        self,
        body: Mapping[str, Any],
        kube: Kube,
        config: Config,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.body = body
        self.kube = kube
        self.config = config
        self.leading = leading
        """Asked before every change (see leader.py): False stops the pass."""
        meta = body["metadata"]
        self.name: str = meta["name"]
        self.uid: str | None = meta.get("uid")
        self.namespace: str = meta.get("namespace") or "default"
        self.path = (
            f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}"
        )
        self.wake = asyncio.Event()
        self.backoff: dict[str | None, Backoff] = {}
        self.last_failure: dict[str | None, str] = {}
        self.last_plan = Plan([])
        self.generation_seen: int | None = None
        self.passes = 0
        self._limiter: StartLimiter | None = None
        self._redis: tuple[Any, RedisTarget, float] | None = None
        self._client: Client | None = None
        self._client_key: tuple[str, str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._task_key: tuple[str, float] | None = None
        self._written: dict[str, Any] | None = None
        self._written_at = 0.0
        self._warned_template: Any = None

    # --- the control loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until `stop` is set. Pods are left running: the pool may be served again
        (an operator restart), and deleting the pool removes them by garbage collection."""
        try:
            while not stop.is_set():
                self.wake.clear()  # before the pass: a wake-up during it counts
                timeout = await self.reconcile_once()
                await wait_any((self.wake, stop), timeout)
        finally:
            await self._disconnect()

    async def reconcile_once(self) -> float:
        """One pass; returns the seconds until the next one is due."""
        began = time.perf_counter()
        try:
            return await self._reconcile()
        finally:
            metrics.RECONCILE_SECONDS.labels(*self.key).observe(time.perf_counter() - began)

    async def _reconcile(self) -> float:
        self.passes += 1
        generation = self.body["metadata"].get("generation")
        self.generation_seen = generation
        try:
            spec = _parse(self.body.get("spec"))
        except Blocked as blocked:
            await self._write_status(Observation(generation, [blocked.problem]), urgent=True)
            return self.config.retry_seconds
        retry = min(self.config.retry_seconds, spec.timing.resync_interval_seconds)
        try:
            return await self._pass(spec, generation)
        except RedisUnavailable as exc:  # mid-pass (a close signal, a presence check)
            problem = Problem("RedisUnreachable", str(exc))
        except Blocked as blocked:
            problem = blocked.problem
        except NotLeading:
            log.warning("pool %s/%s: not the leader (any more): no changes", *self.key)
            return retry
        except KubeError as exc:  # the API itself: nothing to write the status with either
            log.warning("pool %s/%s: Kubernetes API: %s", self.namespace, self.name, exc)
            metrics.RECONCILE_ERRORS.labels(*self.key).inc()
            return retry
        except Exception:  # a bug must not end the loop (and lose the backoff): log, go on
            log.exception("pool %s/%s: reconcile failed", self.namespace, self.name)
            metrics.RECONCILE_ERRORS.labels(*self.key).inc()
            return retry
        metrics.RECONCILE_ERRORS.labels(*self.key).inc()
        log.warning("pool %s/%s: %s", self.namespace, self.name, problem.message)
        await self._write_status(Observation(generation, [problem]), urgent=True)
        return retry

    async def _pass(self, spec: PoolSpec, generation: int | None) -> float:
        self._check_leading()
        now = time.time()
        target = await self._redis_target(spec)
        client = await self._connect(spec, target.url)
        try:
            entities = await IndexReads(client).work_index(spec.entity_type)
        except RedisUnavailable as exc:
            raise Blocked(Problem("RedisUnreachable", str(exc))) from None
        listed = await self.kube.list_pods(self.namespace, pods.pool_labels(self.name))
        by_name = {p["metadata"]["name"]: p for p in listed}
        states = [s for p in listed if (s := pods.worker_state(p)) is not None]

        limiter = self._limiter_for(spec)
        backoff_before = dict(self.backoff)
        result = plan(spec, entities, states, backoff_before, now, limiter.budget())
        self.backoff = dict(result.backoff)
        actions = result.actions
        starts = [a for a in actions if isinstance(a, StartWorker | StartPacked)]
        if starts and await self._deleted():
            log.info("pool %s/%s: being deleted: no new pod", *self.key)
            actions = [a for a in actions if a not in starts]
        step = _Pass(spec, target, by_name, {e.entity_id: e.since for e in entities})
        for action in actions:
            await self._carry_out(action, step)
        self.last_plan = result
        problems = step.problems
        next_due = await self._finish_closing(spec, client, listed, step.closed_now, now)
        self._report(step.done, result)
        self._warn_template(spec)

        for key in result.waiting_for_backoff:
            reason = self.last_failure.get(key)
            what = "the packed workers" if key is PACKED else f"entity {key!r}"
            kind = "ImagePullBackOff" if reason in IMAGE_REASONS else "CrashLoop"
            problems.append(Problem(kind, f"{what}: workers fail ({reason}); backing off"))
            next_due = min(next_due, self.backoff[key].retry_at - now)
        for key in [k for k in self.last_failure if k not in self.backoff]:
            del self.last_failure[key]

        live = [s for s in states if s.phase in ("starting", "running", "closing")]
        ready = sum(1 for s in live if s.phase == "running")
        desired = desired_workers(spec, entities, states, backoff_before, now)
        found = await health.observe(client, spec.entity_type, entities, now)
        health.publish(*self.key, found)
        info = health.PoolInfo(*self.key, spec.entity_type, desired, ready, now)
        await health.announce(client, info, spec.timing.resync_interval_seconds)
        for gauge, value in (
            (metrics.WORKERS_DESIRED, desired),
            (metrics.WORKERS_ACTUAL, len(live)),
            (metrics.WORKERS_READY, ready),
        ):
            gauge.labels(*self.key).set(value)
        seen = Observation(
            generation,
            _unique(problems),
            active_entities=len(entities),
            waiting_jobs=sum(e.waiting for e in entities),
            workers_desired=desired,
            workers_ready=ready,
            paused_entities=found.entities_paused,
        )
        next_due = min(next_due, await self._write_status(seen))
        return max(0.01, min(spec.timing.resync_interval_seconds, next_due))

    # --- actions -----------------------------------------------------------------------------
    async def _carry_out(self, action: Action, step: _Pass) -> None:
        if isinstance(action, StartWorker | StartPacked):
            created = await self._start(action, step)
            if created and isinstance(action, StartWorker) and action.slot == 0:
                waited = time.time() - step.work_since.get(action.entity_id, time.time())
                metrics.WORK_TO_POD_SECONDS.labels(*self.key).observe(max(0.0, waited))
        elif isinstance(action, CloseWorker):
            pod = step.by_name.get(action.name)
            if pod is None or pods.closing_since(pod) is not None:
                return
            log.info(
                "pool %s/%s: closing %s (%s)", self.namespace, self.name, action.name, action.reason
            )
            assert self._client is not None
            self._check_leading()
            await Presence(self._client).close_worker(action.name)
            since = time.time()
            with contextlib.suppress(KeyError):  # gone meanwhile: nothing left to close
                await self._annotate_closing(action.name, since)
            step.closed_now[action.name] = since
            step.done["closed"] += 1
        elif isinstance(action, ForgetWorker):
            pod = step.by_name[action.name]  # the plan forgets only workers of listed pods
            if action.failed:
                key = pods.worker_state(pod)
                reason = pods.waiting_reason(pod) or _exit_reason(pod)
                if key is not None:
                    self.last_failure[key.entity_id] = reason
                self._event("Warning", "WorkerFailed", f"pod {action.name} failed: {reason}")
                step.done["failed"] += 1
            else:
                step.done["ended"] += 1
            await self._delete_pod(action.name)

    async def _start(self, action: StartWorker | StartPacked, step: _Pass) -> bool:
        """Create the worker's pod; False when there is no image or the API refused it (then
        the entity, or the packed workers, back off as when a pod fails: no API storm)."""
        spec = step.spec
        image = spec.image or self.config.worker_image
        if not image:
            step.problems.append(
                Problem("ImageMissing", "no worker image: set spec.image (or AQ_WORKER_IMAGE)")
            )
            return False
        assert self._limiter is not None
        self._limiter.spend(1)
        body = pods.pod_body(
            self.body,
            spec,
            action,
            step.target.for_pods,
            image=image,
            suffix=random_suffix(),
            created_at=time.time(),
        )
        try:
            self._check_leading()
            await self.kube.create_pod(self.namespace, body)
        except KubeError as exc:
            key = action.entity_id if isinstance(action, StartWorker) else PACKED
            self.backoff[key] = self.backoff.get(key, Backoff()).after_failure(spec, time.time())
            self.last_failure[key] = f"pod refused: {exc.reason}"
            step.problems.append(Problem("PodCreateFailed", f"cannot create a worker pod: {exc}"))
            self._event("Warning", "PodCreateFailed", f"cannot create a worker pod: {exc}")
            self.wake.set()  # planned again at once: the status shows the backoff
            return False
        step.done["started"] += 1
        metrics.PODS_CREATED.labels(*self.key).inc()
        return True

    async def _annotate_closing(self, name: str, since: float) -> None:
        try:
            await self.kube.annotate_pod(
                self.namespace, name, {pods.ANNOTATION_CLOSING: repr(since)}
            )
        except KubeError as exc:
            if exc.status == 404:
                raise KeyError(name) from None
            raise

    async def _finish_closing(
        self,
        spec: PoolSpec,
        client: Client,
        listed: list[Body],
        closed_now: dict[str, float],
        now: float,
    ) -> float:
        """Delete closing pods whose worker has deregistered, or whose grace has passed; return
        the seconds until the next grace ends."""
        presence = Presence(client)
        grace = float(pods.termination_grace(spec))
        next_due = float("inf")
        for pod in listed:
            name = pod["metadata"]["name"]
            since = closed_now.get(name, pods.closing_since(pod))
            ended = pods.worker_phase(pod) in ("succeeded", "failed")  # forgotten by the plan
            if since is None or ended or pod["metadata"].get("deletionTimestamp"):
                continue
            if now - since >= grace or not await presence.worker_exists(name):
                log.info(
                    "pool %s/%s: deleting closed worker pod %s", self.namespace, self.name, name
                )
                await self._delete_pod(name)
            else:
                next_due = min(
                    next_due, since + grace - now, spec.timing.heartbeat_interval_seconds
                )
        return next_due

    # --- Redis ------------------------------------------------------------------------------
    async def _redis_target(self, spec: PoolSpec) -> RedisTarget:
        cached = self._redis
        now = time.monotonic()
        if (
            cached is not None
            and cached[0] == spec.redis
            and now - cached[2] < self.config.secret_refresh_seconds
        ):
            return cached[1]
        target = await self._resolve_redis(spec)
        self._redis = (spec.redis, target, now)
        return target

    async def _resolve_redis(self, spec: PoolSpec) -> RedisTarget:
        ref = spec.redis.secret_ref
        if ref is not None:
            try:
                url = await self.kube.secret_value(self.namespace, ref.name, ref.key)
            except SecretNotFound as exc:
                raise Blocked(Problem("SecretNotFound", str(exc))) from None
            except KubeError as exc:
                raise Blocked(
                    Problem("SecretUnreadable", f"cannot read Secret {ref.name}: {exc}")
                ) from None
            return RedisTarget(url, ref)
        if spec.redis.url:
            return RedisTarget(spec.redis.url, spec.redis.url)
        default = self.config.redis_url
        if not default:
            raise Blocked(
                Problem("RedisNotConfigured", "no spec.redis.url or secretRef, and no AQ_REDIS_URL")
            )
        if re.match(URL_PASSWORD_RE, default):
            raise Blocked(
                Problem(
                    "RedisNotConfigured",
                    "the operator's AQ_REDIS_URL carries a password, which pods would get in"
                    " plain text: give the pool spec.redis.secretRef",
                )
            )
        return RedisTarget(default, default)

    async def _connect(self, spec: PoolSpec, url: str) -> Client:
        key = (url, spec.redis.prefix)
        if self._client is None or self._client_key != key:
            await self._disconnect()
            try:
                settings = Settings(redis_url=url, prefix=spec.redis.prefix)
                self._client = await Client.connect(settings)
            except RedisUnavailable as exc:
                raise Blocked(Problem("RedisUnreachable", str(exc))) from None
            except AtomicQueuesError as exc:
                raise Blocked(
                    Problem("RedisUnreachable", f"cannot use Redis at {describe(url)}: {exc}")
                ) from None
            self._client_key = key
            log.info("pool %s/%s: connected to %s", self.namespace, self.name, describe(url))
        task_key = (spec.entity_type, spec.timing.heartbeat_interval_seconds)
        if self._task_key != task_key:
            await cancel_and_wait(self._tasks)
            self._tasks = [
                asyncio.create_task(
                    wake_on_work(self._client, spec.entity_type, self.wake, self._label)
                ),
                asyncio.create_task(
                    sweep_leases(
                        self._client,
                        spec.entity_type,
                        spec.timing.heartbeat_interval_seconds,
                        self.wake,
                        self._label,
                    )
                ),
                asyncio.create_task(tick_schedules(self._client, spec.entity_type)),
            ]
            self._task_key = task_key
        return self._client

    async def _disconnect(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks, self._task_key = [], None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client, self._client_key = None, None

    @property
    def _label(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    async def _deleted(self) -> bool:
        """Whether the pool is deleted or being deleted (asked before a pass creates pods).

        Why: a deletion reaches this loop through the pool's watch event, and the garbage
        collector marks the pool's pods for deletion at the same moment; a pod being deleted is
        a closing worker, which a pass replaces. So a pass that ran between the two (a busy
        machine, a slow watch) started new pods for the deleted pool, which the garbage
        collector then deleted too, often before their worker could even handle SIGTERM."""
        if self.body["metadata"].get("deletionTimestamp"):
            return True
        found = await self.kube.find_pool(self.namespace, self.name)
        meta = (found or {}).get("metadata") or {}
        made_anew = self.uid is not None and meta.get("uid") != self.uid
        return found is None or made_anew or bool(meta.get("deletionTimestamp"))

    def _check_leading(self) -> None:
        if not self.leading():
            raise NotLeading

    async def _delete_pod(self, name: str) -> None:
        self._check_leading()
        if await self.kube.delete_pod(self.namespace, name):
            metrics.PODS_DELETED.labels(*self.key).inc()

    def _limiter_for(self, spec: PoolSpec) -> StartLimiter:
        rate = spec.workers.max_starts_per_second
        if self._limiter is None or self._limiter.rate != rate:
            self._limiter = StartLimiter(rate)
        return self._limiter

    # --- status and events ------------------------------------------------------------------
    async def _write_status(self, seen: Observation, *, urgent: bool = False) -> float:
        """Write the status when it changed (at most once per `status_seconds` unless a
        condition changes); return the seconds until a held-back write is due."""
        live = self.body.get("status") or {}
        new = status.pool_status(seen, self._written or live, datetime.now(UTC))
        before = self._written if self._written is not None else live
        if not status.changed(new, before):
            return float("inf")
        conditions_changed = _condition_states(new) != _condition_states(before)
        wait = self._written_at + self.config.status_seconds - time.monotonic()
        if wait > 0 and not (urgent or conditions_changed):
            return wait
        if conditions_changed:
            self._post_conditions(new, before)
        try:
            await self.kube.patch_status(self.path, new)
        except KubeError as exc:
            log.warning("pool %s/%s: cannot write status: %s", self.namespace, self.name, exc)
            return self.config.retry_seconds
        self._written, self._written_at = new, time.monotonic()
        return float("inf")

    def _post_conditions(self, new: Mapping[str, Any], old: Mapping[str, Any]) -> None:
        now = {c["type"]: c for c in new.get("conditions") or []}
        degraded = now.get("Degraded") or {}
        before = _condition_states(old).get("Degraded")
        if degraded.get("status") == "True" and before != ("True", degraded.get("reason")):
            self._event("Warning", str(degraded.get("reason")), str(degraded.get("message")))
        elif degraded.get("status") == "False" and before is not None and before[0] == "True":
            self._event("Normal", "Recovered", "the pool works again")

    def _report(self, done: Counter[str], result: Plan) -> None:
        if done["started"]:
            self._event("Normal", "ScaledUp", f"started {done['started']} worker pod(s)")
        if done["closed"]:
            reasons = sorted({a.reason for a in result.actions if isinstance(a, CloseWorker)})
            self._event(
                "Normal", "ScaledDown", f"closing {done['closed']} worker(s): {', '.join(reasons)}"
            )

    def _warn_template(self, spec: PoolSpec) -> None:
        if spec.pod_template == self._warned_template:
            return
        self._warned_template = spec.pod_template
        ignored = pods.ignored_template_keys(spec.pod_template)
        if ignored:
            self._event(
                "Warning", "TemplateIgnored", f"podTemplate keys not used: {', '.join(ignored)}"
            )

    def _event(self, kind: str, reason: str, message: str) -> None:
        log.log(
            logging.WARNING if kind == "Warning" else logging.INFO,
            "pool %s/%s: %s: %s",
            self.namespace,
            self.name,
            reason,
            message,
        )
        with contextlib.suppress(LookupError):  # outside a kopf operator: the log line is all
            target = kopf.Body(cast(kopf.RawBody, _event_target(self.body)))
            kopf.event(target, type=kind, reason=reason, message=message[:1000])


def _parse(spec: Any) -> PoolSpec:
    try:
        return PoolSpec.model_validate(spec or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("spec", *first["loc"]))
        raise Blocked(Problem("InvalidSpec", f"{where}: {first['msg']}")) from None


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: dict[str, Problem] = {}
    for problem in problems:
        seen.setdefault(problem.reason, problem)
    return list(seen.values())


def _condition_states(status_body: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        str(c.get("type")): (str(c.get("status")), str(c.get("reason")))
        for c in status_body.get("conditions") or []
        if isinstance(c, Mapping)
    }


def _exit_reason(pod: Mapping[str, Any]) -> str:
    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (s.get("state") or {}).get("terminated")
        if terminated:
            return (
                f"{terminated.get('reason') or 'exited'} (exit code {terminated.get('exitCode')})"
            )
    return str((pod.get("status") or {}).get("reason") or "failed")


def _event_target(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", f"{API_GROUP}/{API_VERSION}"),
        "kind": body.get("kind", "EntityWorkerPool"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta},
    }
