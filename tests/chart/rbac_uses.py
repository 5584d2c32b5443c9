"""What the operator does with the Kubernetes API, as RBAC (group, resource) -> verbs.

Two sources: the calls operator/aq_operator/kube.py makes itself, read from its code (so a new
call there fails the chart tests until the chart's rules grant it), and what kopf does for the
operator, which no code of ours spells out (kopf 1.x, as runner.py configures it).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KUBE_PY = REPO / "operator" / "aq_operator" / "kube.py"

Uses = dict[tuple[str, str], set[str]]

KOPF_USES: Uses = {
    # on.event handlers for pools: kopf lists and watches them. With watch-event handlers only
    # (no daemons, timers or change handlers) kopf adds no finalizer and writes no annotations
    # or status: it never patches a pool.
    ("atomicqueues.io", "entityworkerpools"): {"list", "watch"},
    # on.event for the pools' pods: list and watch
    ("", "pods"): {"list", "watch"},
    # kopf.info/warn and its own handler Events: core v1 Events are POSTed, never patched
    ("", "events"): {"create"},
}
"""Scanning is off (runner.py): no namespaces, CRDs or API discovery beyond what every
authenticated user may read. `kopf_handler_kinds` checks that runner.py still registers only
the handler kinds this table was written for."""

KOPF_HANDLERS = {"login", "cleanup", "event"}
"""kopf.on.* handlers that need no permission beyond KOPF_USES (daemon, timer, create, update,
resume, delete and field would add a finalizer and patches of the pool)."""


def kopf_handler_kinds(path: Path = REPO / "operator" / "aq_operator" / "runner.py") -> set[str]:
    """The kinds of kopf handlers runner.py registers: `kopf.on.event` -> "event"."""
    found = re.findall(r"@kopf\.(?:on\.)?(\w+)\(", path.read_text(encoding="utf-8"))
    return set(found)


_RESOURCE = re.compile(r"/(pods|secrets|leases|events|entityworkerpools)\b")
_COLLECTION = re.compile(r"/(pods|secrets|leases|events|entityworkerpools)$")
_GROUPS = {"leases": "coordination.k8s.io", "entityworkerpools": "atomicqueues.io"}
_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _source(node: ast.AST, text: str) -> str:
    return ast.get_source_segment(text, node) or ""


def kube_py_uses(path: Path = KUBE_PY) -> Uses:
    """(group, resource) -> verbs of every `self.request(METHOD, PATH, ...)` in kube.py."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    helpers = {  # module-level path helpers: _pod(ns, name) -> the f-string they return
        fn.name: _source(fn.body[-1].value, text)
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef)
        and isinstance(fn.body[-1], ast.Return)
        and fn.body[-1].value is not None
    }
    uses: Uses = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.AsyncFunctionDef | ast.FunctionDef) or fn.name == "request":
            continue
        local = {  # path = f"..." inside the method
            target.id: _source(node.value, text)
            for node in ast.walk(fn)
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for call in ast.walk(fn):
            if not (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "request"
                and len(call.args) >= 2
                and isinstance(call.args[0], ast.Constant)
            ):
                continue
            method = str(call.args[0].value)
            where = _source(call.args[1], text)
            if isinstance(call.args[1], ast.Name):
                where = local.get(where, where)
            elif isinstance(call.args[1], ast.Call) and isinstance(call.args[1].func, ast.Name):
                where = helpers.get(call.args[1].func.id, where)
            uses.setdefault(_resource(where, fn.name), set()).add(_verb(method, where, fn.name))
    return uses


def _resource(where: str, fn: str) -> tuple[str, str]:
    if where.rstrip("\"'").endswith("/status"):
        return ("atomicqueues.io", "entityworkerpools/status")  # patch_status: a pool's status
    found = _RESOURCE.findall(where)
    if not found:
        raise AssertionError(f"kube.py {fn}: no known resource in the path {where}")
    return (_GROUPS.get(found[-1], ""), found[-1])


def _verb(method: str, where: str, fn: str) -> str:
    if method == "GET":  # a collection (ends with the resource) is a list; else one object
        return "list" if _COLLECTION.search(where.rstrip("\"'")) else "get"
    if method not in _VERBS:
        raise AssertionError(f"kube.py {fn}: HTTP method {method} has no RBAC verb here")
    return _VERBS[method]


def operator_uses() -> Uses:
    """Everything the operator does: kube.py's calls and kopf's."""
    uses: Uses = {key: set(verbs) for key, verbs in KOPF_USES.items()}
    for key, verbs in kube_py_uses().items():
        uses.setdefault(key, set()).update(verbs)
    return uses
