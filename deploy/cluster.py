"""The Triton images still deployed in this namespace, read from the Kubernetes API with the
pod's service account: the plan-build Job's gc keeps every key they use.

"Deployed" is every ReplicaSet of the Triton pools, including the ones scaled to zero that
a Deployment keeps for `kubectl rollout undo` (revisionHistoryLimit): a rollback must find
its plans. Needs the Job's ServiceAccount to list replicasets (k8s/setup/rbac.yaml) and
egress to the API server (k8s/base/networkpolicy.yaml).
"""
from __future__ import annotations

import json
import os
import ssl
import urllib.parse
import urllib.request
from pathlib import Path

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SELECTOR = "app.kubernetes.io/name=triton"


class ClusterError(RuntimeError):
    """The API could not be asked (no token, refused, not allowed): nothing is known."""


def images_of(replicaset_list: dict) -> set[str]:
    """Every container and init-container image of a ReplicaSetList's pod templates."""
    out = set()
    for rs in replicaset_list.get("items", []):
        spec = rs.get("spec", {}).get("template", {}).get("spec", {})
        out |= {c["image"] for c in spec.get("containers", []) + spec.get("initContainers", []) if c.get("image")}
    return out


def _api() -> str:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ClusterError("KUBERNETES_SERVICE_HOST is not set: not running in a Kubernetes pod")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def deployed_images(api: str | None = None, sa_dir: Path = SERVICE_ACCOUNT, timeout_s: float = 15.0,
                    selector: str = SELECTOR) -> set[str]:
    """Images of every Triton ReplicaSet of this pod's namespace (paged), or ClusterError."""
    try:
        token = (sa_dir / "token").read_text().strip()
        namespace = (sa_dir / "namespace").read_text().strip()
    except OSError as exc:
        raise ClusterError(f"no service-account token in {sa_dir} ({exc}): the plan-build Job needs its "
                           "ServiceAccount token mounted (automountServiceAccountToken: true)") from exc
    api = api or _api()
    ca = sa_dir / "ca.crt"
    context = ssl.create_default_context(cafile=str(ca)) if api.startswith("https") and ca.is_file() else None
    images, cont = set(), ""
    while True:
        query = urllib.parse.urlencode({"labelSelector": selector, "limit": 200, **({"continue": cont} if cont else {})})
        url = f"{api}/apis/apps/v1/namespaces/{namespace}/replicasets?{query}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
                page = json.loads(resp.read())
        except (OSError, ValueError) as exc:      # URLError/HTTPError are OSErrors; bad JSON a ValueError
            raise ClusterError(f"cannot list replicasets ({selector}) in {namespace} at {api}: {exc}") from exc
        images |= images_of(page)
        cont = page.get("metadata", {}).get("continue", "")
        if not cont:
            return images
