"""Reading deploy/kubernetes/ for tests/test_kubernetes.py: the manifests, the kustomization rendered the way
kustomize renders it (for the fields it uses), the gateway's pod environment as the kubelet would build it, and
the pods' processes (the gateway, redis-server) started on loopback with the containers' arguments."""

from __future__ import annotations

import copy
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.procs import ROOT, Gateway, Spawner, free_port

KDIR = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CLUSTER_SCOPED = {"Namespace"}


# -- reading the manifests -------------------------------------------------------------------------------
def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KDIR / "kustomization.yaml").read_text())


def render() -> list[dict[str, Any]]:
    """The kustomization as kustomize renders it, for the fields it uses: resources in order, the namespace,
    labels (objects and pod/claim templates, never selectors) and image names/tags."""
    k = kustomization()
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in k.get("images", [])}
    out = []
    for res in k["resources"]:
        for doc in docs(KDIR / res):
            doc = copy.deepcopy(doc)
            meta = doc["metadata"]
            if doc["kind"] not in CLUSTER_SCOPED:
                meta["namespace"] = k["namespace"]
            for entry in k.get("labels", []):
                assert not entry.get("includeSelectors"), "this reader does not relabel selectors"
                meta.setdefault("labels", {}).update(entry["pairs"])
                spec = doc.get("spec", {})
                if entry.get("includeTemplates"):
                    templates = [spec["template"]] if "template" in spec else []
                    for t in templates + spec.get("volumeClaimTemplates", []):
                        t.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
            for c in containers(doc):
                c["image"] = images.get(c["image"].split(":")[0], c["image"])
            out.append(doc)
    return out


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def all_objects() -> list[dict[str, Any]]:
    return [d for f in sorted(KDIR.glob("*.yaml")) if f.name != "kustomization.yaml" for d in docs(f)]


def gateway_container() -> dict[str, Any]:
    (c,) = [c for c in containers(find(all_objects(), "Deployment", "llm-gateway")) if c["name"] == "gateway"]
    return c


def gateway_config() -> str:
    return find(all_objects(), "ConfigMap", "llm-gateway-config")["data"]["gateway.yaml"]


def secret_data() -> dict[str, str]:
    return find(all_objects(), "Secret", "llm-gateway-secrets")["stringData"]


def dockerfile_cmd() -> list[str]:
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    return json.loads(line.removeprefix("CMD "))


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def write(tmp: Path, text: str, name: str = "gateway.yaml") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def pod_env(secret: dict[str, str]) -> dict[str, str]:
    """The gateway container's environment as the kubelet builds it from `secret`."""
    env = {}
    for e in gateway_container()["env"]:
        env[e["name"]] = e["value"] if "value" in e else secret[e["valueFrom"]["secretKeyRef"]["key"]]
    return env


def real_secret() -> dict[str, str]:
    """The placeholders replaced by real values of the same shape (a JSON list stays a list)."""
    out = {}
    for key, value in secret_data().items():
        out[key] = json.dumps([secrets.token_hex(24) for _ in json.loads(value)]) if value.startswith("[") \
            else secrets.token_hex(32)
    return out


# -- processes as the pods run them ----------------------------------------------------------------------
def pod_gateway(spawn: Spawner, config: dict[str, Any], env: dict[str, str]) -> Gateway:
    """The container's args (the config path and port aside) in a fresh working directory, as in the pod."""
    port, workdir = free_port(), spawn.tmp / f"workdir-{len(spawn.procs)}"
    workdir.mkdir()
    args = list(gateway_container()["args"])
    args[args.index("--config") + 1] = str(write(spawn.tmp, yaml.safe_dump(config), f"gateway-{port}.yaml"))
    args[args.index("--port") + 1] = str(port)
    p = spawn.proc(["env", "-C", str(workdir), sys.executable, "-m", "gateway", *args], f"gateway-{port}",
                   {**env, "PYTHONPATH": str(ROOT)})  # this checkout's gateway, whatever the working directory
    gw = Gateway(p, port)
    p.wait_http(gw.url + "/healthz")
    return gw


def wait_status(url: str, want: int, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url, timeout=5)
        if r.status_code == want or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def start_redis(spawn: Spawner, args: list[str], port: int, password: str | None = None) -> Any:
    """Start redis-server with `args`; its client once it answers."""
    import redis

    p = spawn.proc(args, f"redis-{port}")
    client = redis.Redis(port=port, password=password)
    deadline = time.monotonic() + 10
    while True:
        assert p.popen.poll() is None, p.output()
        try:
            client.ping()
            return client
        except redis.ConnectionError:
            assert time.monotonic() < deadline, p.output()
            time.sleep(0.05)
