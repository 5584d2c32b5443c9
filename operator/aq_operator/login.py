"""The operator's Kubernetes credentials, found the way kubectl finds them.

Why: kopf's own basic login reads a service account's token but always talks to
`https://kubernetes.default.svc` (ignoring KUBERNETES_SERVICE_HOST/PORT), and outside a cluster
it returns no token for a kubeconfig whose user authenticates through an exec plugin (as EKS and
GKE kubeconfigs do). The `kubernetes` package's config loading does both, so the operator logs
in through it (kopf's `login_via_client`): in a pod, the service account's token and CA and the
API server named by KUBERNETES_SERVICE_HOST/PORT; elsewhere the kubeconfig (KUBECONFIG, or
~/.kube/config) with its current context: tokens, client certificates, exec plugins. kopf runs
the login again when the API server answers 401, so a short-lived token is renewed.
"""

from __future__ import annotations

from typing import Any

import kopf


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Credentials for kopf's `on.login` (also called once at start, to fail early)."""
    try:
        return kopf.login_via_client(**kwargs)
    except kopf.LoginError:
        raise kopf.LoginError(f"no Kubernetes credentials: {_why()}") from None
    except (OSError, ValueError, KeyError) as exc:  # an unreadable or broken kubeconfig
        raise kopf.LoginError(f"cannot read Kubernetes credentials: {exc}") from None


def _why() -> str:
    """Why the kubeconfig cannot be loaded (kopf's error only says that neither way worked)."""
    import kubernetes.config

    try:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    except Exception as exc:  # what the package raises varies: its message is what counts
        return f"not in a pod with a service account, and the kubeconfig: {exc}"
    return "not in a pod with a service account, and the kubeconfig gave no credentials"
