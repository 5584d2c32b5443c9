"""The few Kubernetes API calls the operator makes itself, on kopf's credentials.

kopf watches pools and pods and posts Events; the rest (create, annotate and delete pods, read a
Secret, write a pool's status, read and write the leader Lease) is a few REST calls, made here
with aiohttp — already in the process as kopf's own HTTP client — and the `kopf.ConnectionInfo`
that kopf's login produced (service account in a cluster, kubeconfig outside; the operator's
login handler keeps the latest). Why not `kubernetes_asyncio` or `lightkube`: a second client
would bring a second login, a second HTTP stack and (for the first) a large generated package
with loosely typed models, for calls this short; bodies stay plain dicts as the API returns
them, and pods.py is the one module that reads or writes their fields.

A label selector is sent to the server and applied again here, so a server that ignores it
(the mock API of the fast tests) still yields exactly the pool's pods.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from atomicqueues.errors import AtomicQueuesError
from atomicqueues.pools.spec import API_GROUP, API_VERSION

Body = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)


class KubeError(AtomicQueuesError):
    """The API server refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    """404: the object (or its namespace) does not exist."""


class Conflict(KubeError):
    """409: the object exists already (a name taken) or changed under us."""


class SecretNotFound(AtomicQueuesError):
    """The Secret a pool names, or its key, does not exist (or is not valid text)."""


class Kube:
    """An API client on the connection kopf logged in with (`connection()` gives the latest)."""

    def __init__(self, connection: Callable[[], kopf.ConnectionInfo | None]) -> None:
        self._connection = connection
        self._session: aiohttp.ClientSession | None = None
        self._session_for: kopf.ConnectionInfo | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _open(self) -> tuple[aiohttp.ClientSession, kopf.ConnectionInfo]:
        info = self._connection()
        if info is None:
            raise KubeError(0, "NotLoggedIn", "no Kubernetes credentials yet (kopf login)")
        async with self._lock:
            if self._session is None or self._session_for is not info:
                if self._session is not None:
                    await self._session.close()
                ssl_context: ssl.SSLContext | bool = (
                    info.as_ssl_context() if info.server.startswith("https") else False
                )
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=ssl_context, limit=20),
                    headers={"Accept": "application/json", **info.as_http_headers()},
                    timeout=TIMEOUT,
                )
                self._session_for = info
            return self._session, info

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Body | None = None,
        content_type: str = "application/json",
    ) -> Body:
        session, info = await self._open()
        url = info.server.rstrip("/") + path
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            async with session.request(
                method, url, params=params, data=data, headers=headers
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeError(
                0, "Unreachable", f"{method} {path}: {exc or type(exc).__name__}"
            ) from None
        try:
            reply = json.loads(text) if text else {}
        except ValueError:
            reply = {"message": text[:200]}
        if status >= 400:
            error = {404: NotFound, 409: Conflict}.get(status, KubeError)
            reason = str(reply.get("reason") or "Error")
            raise error(status, reason, str(reply.get("message") or text[:200]))
        return reply if isinstance(reply, dict) else {}

    # --- pods ---------------------------------------------------------------------------------
    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[Body]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        items: list[Body] = []
        params = {"labelSelector": selector, "limit": "500"}
        while True:
            reply = await self.request(
                "GET", f"/api/v1/namespaces/{_q(namespace)}/pods", params=params
            )
            items += [p for p in reply.get("items") or [] if _has_labels(p, labels)]
            more = (reply.get("metadata") or {}).get("continue")
            if not more:
                return items
            params = {**params, "continue": str(more)}

    async def create_pod(self, namespace: str, body: Body) -> Body:
        return await self.request("POST", f"/api/v1/namespaces/{_q(namespace)}/pods", body=body)

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        patch = {"metadata": {"annotations": dict(annotations)}}
        await self.request("PATCH", _pod(namespace, name), body=patch, content_type=MERGE_PATCH)

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod (its grace period as it says); False when it was gone already."""
        try:
            await self.request("DELETE", _pod(namespace, name))
        except NotFound:
            return False
        return True

    # --- secrets and pools --------------------------------------------------------------------
    async def find_pool(self, namespace: str, name: str) -> Body | None:
        """The pool `name`, or None when there is none. Through `list` with a field selector:
        the verb the chart grants on pools (kopf lists and watches them; nothing needs get)."""
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{_q(namespace)}/entityworkerpools"
        params = {"fieldSelector": f"metadata.name={name}"}
        reply = await self.request("GET", path, params=params)
        found = [
            p for p in reply.get("items") or [] if (p.get("metadata") or {}).get("name") == name
        ]
        return found[0] if found else None

    async def secret_value(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret as text; `SecretNotFound` when the Secret or the key is missing."""
        try:
            secret = await self.request(
                "GET", f"/api/v1/namespaces/{_q(namespace)}/secrets/{_q(name)}"
            )
        except NotFound:
            raise SecretNotFound(f"Secret {namespace}/{name} not found") from None
        data = secret.get("data") or {}
        if key in data:
            try:
                return base64.b64decode(data[key], validate=True).decode("utf-8").strip()
            except (binascii.Error, UnicodeDecodeError):
                raise SecretNotFound(
                    f"Secret {namespace}/{name}: key {key!r} is not text"
                ) from None
        plain = secret.get("stringData") or {}
        if key in plain:
            return str(plain[key]).strip()
        raise SecretNotFound(f"Secret {namespace}/{name} has no key {key!r}")

    async def patch_status(self, path: str, status: Mapping[str, Any]) -> None:
        """Merge `status` into an object's status subresource (`path`: the object's URL path)."""
        body = {"status": dict(status)}
        await self.request("PATCH", f"{path}/status", body=body, content_type=MERGE_PATCH)

    # --- leases (leader election) -------------------------------------------------------------
    async def get_lease(self, namespace: str, name: str) -> Body | None:
        """The Lease, or None when it does not exist."""
        try:
            return await self.request("GET", _lease(namespace, name))
        except NotFound:
            return None

    async def create_lease(self, namespace: str, body: Body) -> Body:
        """Create a Lease; `Conflict` when another replica created it first."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{_q(namespace)}/leases"
        return await self.request("POST", path, body=body)

    async def replace_lease(self, namespace: str, body: Body) -> Body:
        """Write a Lease back; `Conflict` when it changed since `body`'s resourceVersion."""
        name = body["metadata"]["name"]
        return await self.request("PUT", _lease(namespace, name), body=body)


def _q(part: str) -> str:
    return quote(part, safe="")


def _pod(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(name)}"


def _lease(namespace: str, name: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{_q(namespace)}/leases/{_q(name)}"


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())
