"""Commands and queries by name: the only code a worker will run for a job.

A job names its handler; the worker looks the name up here and nowhere else. Nothing is ever
imported or executed from a name found in job data: an unknown name, or a payload that fails
the handler's pydantic model, dead-letters the job at once with a clear error.

    registry = Registry()

    class Charge(BaseModel):
        amount_cents: int

    @registry.command("charge")
    async def charge(ctx: JobContext, payload: Charge) -> None: ...

    @registry.query("balance")
    async def balance(ctx: JobContext, payload: None) -> int: ...   # the result is kept
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from math import inf
from typing import TYPE_CHECKING, Any, get_type_hints

from pydantic import BaseModel, ValidationError

from .errors import InvalidInput, PermanentError, UnknownHandler

if TYPE_CHECKING:
    from .context import JobContext

HandlerFn = Callable[..., Any]


@dataclass(frozen=True)
class Handler:
    name: str
    fn: HandlerFn
    model: type[BaseModel] | None
    """Validates the payload; None passes the decoded JSON as it is."""
    is_query: bool
    """A query's return value becomes the job's result; a command's is dropped."""
    timeout: float | None = None
    """Its jobs' time limit in seconds, unless a job's enqueue gives one (None: the worker's
    `Settings.job_timeout`)."""

    def parse(self, payload_json: str) -> Any:
        """The payload the handler receives, or `PermanentError` when it does not fit."""
        try:
            if self.model is None:
                return json.loads(payload_json)
            return self.model.model_validate_json(payload_json)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()
            detail = "; ".join(line.strip() for line in first[1:3]) or str(exc)
            raise PermanentError(f"invalid payload for {self.name!r}: {detail}") from None

    @cached_property
    def is_async(self) -> bool:
        """An `async def` handler (else it runs in a thread)."""
        return inspect.iscoroutinefunction(self.fn)

    async def __call__(self, ctx: JobContext, payload: Any) -> Any:
        if self.is_async:
            return await self.fn(ctx, payload)
        work = asyncio.ensure_future(asyncio.to_thread(self.fn, ctx, payload))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # A thread cannot be stopped: the job has not ended before the function returns.
            await asyncio.wait({work})
            raise


def _payload_model(fn: HandlerFn) -> type[BaseModel] | None:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise InvalidInput(f"handler {fn.__qualname__} must take (ctx, payload)")
    try:
        hints = get_type_hints(fn)
    except Exception:  # unresolvable annotations: treat the payload as plain JSON
        return None
    hint = hints.get(params[1].name)
    if inspect.isclass(hint) and issubclass(hint, BaseModel):
        return hint
    return None


class Registry:
    """The handlers a worker may run, by name."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def _register(
        self, name: str | None, model: type[BaseModel] | None, is_query: bool, timeout: float | None
    ) -> Callable[[HandlerFn], HandlerFn]:
        if timeout is not None and not (isinstance(timeout, int | float) and 0 < timeout < inf):
            raise InvalidInput(f"handler timeout must be a positive number of seconds: {timeout!r}")

        def decorate(fn: HandlerFn) -> HandlerFn:
            key = name or fn.__name__
            if key in self._handlers:
                raise InvalidInput(f"handler {key!r} is registered twice")
            model_ = model or _payload_model(fn)
            self._handlers[key] = Handler(key, fn, model_, is_query, timeout)
            return fn

        return decorate

    def command(
        self,
        name: str | None = None,
        *,
        model: type[BaseModel] | None = None,
        timeout: float | None = None,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register a handler whose return value is dropped; `timeout`: its jobs' time limit
        in seconds (default: the worker's `AQ_JOB_TIMEOUT`)."""
        return self._register(name, model, False, timeout)

    def query(
        self,
        name: str | None = None,
        *,
        model: type[BaseModel] | None = None,
        timeout: float | None = None,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register a handler whose return value (JSON) becomes the job's result."""
        return self._register(name, model, True, timeout)

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise UnknownHandler(
                f"no handler registered under {name!r} (registered: {known})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._handlers))

    def __len__(self) -> int:
        return len(self._handlers)


def importable_from_here() -> None:
    """Put the working directory on the import path, as `python -m` and `python script.py` do,
    so `--handlers handlers:registry` finds handlers.py next to where `aq` runs (the `aq`
    script's own path is the folder it is installed in)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def load_registry(spec: str) -> Registry:
    """Import `module:attribute` named by a person (never by job data) and check it. The module
    is looked for in the working directory too (`importable_from_here`); any error its import
    raises becomes one line."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInput(f"--handlers {spec!r}: expected MODULE:ATTRIBUTE")
    importable_from_here()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while it is imported
        detail = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise InvalidInput(
            f"--handlers {spec!r}: cannot import {module_name!r}: {detail}"
        ) from None
    registry = getattr(module, attr, None)
    if not isinstance(registry, Registry):
        raise InvalidInput(f"--handlers {spec!r}: {attr!r} in {module_name!r} is not a Registry")
    return registry
