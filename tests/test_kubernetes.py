"""deploy/kubernetes/: every manifest validates offline against the Kubernetes schemas (strict: an unknown
field fails), the kustomization holds every file, the objects fit one another, and they fit the real
gateway: its probe paths answered by a gateway process serving the ConfigMap's config, its port, the
image's CMD and user (deploy/Dockerfile), and Redis's arguments run by a real redis-server.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.config_loader import ConfigError, load_settings
from tests.kube_manifests import (CLUSTER_SCOPED, DOCKERFILE, KDIR, all_objects, containers, dockerfile_cmd, find,
                                  flag, gateway_config, gateway_container, kustomization, labels_match, pod_env,
                                  pod_gateway, real_secret, render, secret_data, start_redis, wait_status, write)
from tests.procs import ROOT, Gateway, Spawner, free_port

# The oldest Kubernetes release the manifests claim to fit, and a recent one (APIs removed since would fail).
KUBE_VERSIONS = ("1.30.0", "1.34.0")


def kube_validate(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({version}) at {where}: {exc.message}")


# -- the manifests on their own --------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_and_the_rendered_objects_validate_strictly(version: str) -> None:
    objs = all_objects()
    assert {o["kind"] for o in objs} >= {"Namespace", "Deployment", "Service", "ConfigMap", "Secret",
                                         "StatefulSet", "PodDisruptionBudget", "NetworkPolicy"}
    for doc in objs + render():
        kube_validate(doc, version)


def test_kustomization_lists_every_file_and_images_cover_every_container() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    files = {f.name for f in KDIR.iterdir()} - {"kustomization.yaml"}
    assert len(k["resources"]) == len(set(k["resources"])), "a resource listed twice"
    assert set(k["resources"]) == files, (sorted(files - set(k["resources"])), sorted(set(k["resources"]) - files))
    assert k["namespace"] == find(all_objects(), "Namespace", k["namespace"])["metadata"]["name"]
    # `kustomize edit set image llm-gateway=...` retargets the gateway: every image has an entry
    names = {i["name"] for i in k["images"]}
    used = {c["image"].split(":")[0] for o in all_objects() for c in containers(o)}
    assert used == names and "llm-gateway" in used, (used, names)
    assert gateway_container()["image"] == "llm-gateway"


def test_kubectl_kustomize_renders_what_the_test_reads() -> None:
    """The tests read the kustomization themselves; where kubectl is installed, its kustomize must agree."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the kustomization was checked by the test's own reader only")
    out = subprocess.run([kubectl, "kustomize", str(KDIR)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    assert theirs.keys() == ours.keys()
    for key, doc in ours.items():
        assert theirs[key] == doc, key


def test_objects_refer_to_one_another() -> None:
    objs = render()
    dep, sts = find(objs, "Deployment", "llm-gateway"), find(objs, "StatefulSet", "llm-gateway-redis")
    gw_labels = dep["spec"]["template"]["metadata"]["labels"]
    redis_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert labels_match(dep["spec"]["selector"]["matchLabels"], gw_labels)
    assert labels_match(sts["spec"]["selector"]["matchLabels"], redis_labels)
    assert labels_match(find(objs, "Service", "llm-gateway")["spec"]["selector"], gw_labels)
    assert labels_match(find(objs, "Service", "llm-gateway-redis")["spec"]["selector"], redis_labels)
    assert not labels_match(find(objs, "Service", "llm-gateway")["spec"]["selector"], redis_labels)
    pdb = find(objs, "PodDisruptionBudget", "llm-gateway")
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], gw_labels)
    assert pdb["spec"]["minAvailable"] == 1 < dep["spec"]["replicas"]
    netpol = find(objs, "NetworkPolicy", "llm-gateway-redis")
    assert labels_match(netpol["spec"]["podSelector"]["matchLabels"], redis_labels)
    (rule,) = netpol["spec"]["ingress"]
    assert [labels_match(f["podSelector"]["matchLabels"], gw_labels) for f in rule["from"]] == [True]
    assert sts["spec"]["serviceName"] == "llm-gateway-redis"
    for o in objs:
        assert o["kind"] in CLUSTER_SCOPED or o["metadata"]["namespace"] == "llm-gateway", o["metadata"]
        pod = o.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in o["spec"].get("volumeClaimTemplates", [])}
        for c in containers(o):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, (o["metadata"]["name"], m)
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = find(objs, "Secret", ref["name"])
                    assert ref["key"] in secret["stringData"], ref
        for v in volumes.values():
            if "configMap" in v:
                cm = find(objs, "ConfigMap", v["configMap"]["name"])
                assert all(i["key"] in cm["data"] for i in v["configMap"]["items"])


def test_every_secret_key_is_used_or_its_gap_documented() -> None:
    used = {e["valueFrom"]["secretKeyRef"]["key"] for e in gateway_container()["env"] if "valueFrom" in e}
    deployment_text = (KDIR / "gateway-deployment.yaml").read_text()
    for key in set(secret_data()) - used:  # wired only in a comment, waiting for a config key
        assert re.search(rf"#.*key: {re.escape(key)}\}}", deployment_text), key


def test_ports_agree_with_the_service_the_annotations_the_config_and_the_image() -> None:
    c, objs = gateway_container(), all_objects()
    (port,) = c["ports"]
    svc = find(objs, "Service", "llm-gateway")
    assert svc["spec"]["type"] == "ClusterIP"
    (sport,) = svc["spec"]["ports"]
    assert sport["targetPort"] == port["name"] and sport["port"] == 4000
    ann = find(objs, "Deployment", "llm-gateway")["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    config = yaml.safe_load(gateway_config())
    expose = re.search(r"^EXPOSE (\d+)$", DOCKERFILE.read_text(), re.M)
    assert expose is not None
    assert {port["containerPort"], int(ann["prometheus.io/port"]), int(flag(c["args"], "--port")),
            config["server"]["port"], int(flag(dockerfile_cmd(), "--port")), int(expose.group(1))} == {4000}
    # Redis: the Service, the container and redis-server's own --port
    redis = containers(find(objs, "StatefulSet", "llm-gateway-redis"))[0]
    (rport,) = find(objs, "Service", "llm-gateway-redis")["spec"]["ports"]
    assert rport["targetPort"] == redis["ports"][0]["name"]
    assert rport["port"] == redis["ports"][0]["containerPort"] == int(flag(redis["args"], "--port"))


def test_args_and_config_mount_are_the_images_cmd() -> None:
    c = gateway_container()
    assert c["args"] == dockerfile_cmd()
    path = Path(flag(c["args"], "--config"))
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent)]
    pod = find(all_objects(), "Deployment", "llm-gateway")["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert vol["configMap"]["name"] == "llm-gateway-config"
    assert [i["path"] for i in vol["configMap"]["items"]] == [path.name] and mount["readOnly"] is True


def test_pods_are_non_root_and_meet_the_restricted_standard() -> None:
    objs = all_objects()
    ns = find(objs, "Namespace", "llm-gateway")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    uid = int(re.search(r"^USER (\d+)$", DOCKERFILE.read_text(), re.M).group(1))  # type: ignore[union-attr]
    assert f"useradd --uid {uid} " in DOCKERFILE.read_text()
    pods = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(pods) == 2
    for o in pods:
        pod = o["spec"]["template"]["spec"]
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
        assert all("hostPath" not in v for v in pod.get("volumes", []))
        for c in containers(o):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]} and not sc.get("privileged")
            for part in ("requests", "limits"):
                assert set(c["resources"][part]) == {"cpu", "memory"}, (o["metadata"]["name"], part)
    gw = find(objs, "Deployment", "llm-gateway")["spec"]["template"]["spec"]
    assert gw["securityContext"]["runAsUser"] == uid
    # a read-only root: where relative paths land (the working directory) and /tmp are writable volumes
    c = gateway_container()
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert c["workingDir"] in writable and "/tmp" in writable


def test_gateway_scheduling_and_shutdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in pod_env(real_secret()).items():  # the config reads a backend's key from the pod's env
        monkeypatch.setenv(name, value)
    dep = find(all_objects(), "Deployment", "llm-gateway")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    keys = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    for t in pod["topologySpreadConstraints"]:
        assert labels_match(t["labelSelector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    # SIGKILL comes terminationGracePeriodSeconds after the preStop hook starts: the pause plus the drain fit
    cmd = gateway_container()["lifecycle"]["preStop"]["exec"]["command"]
    drain = load_settings(write(tmp_path, gateway_config())).server.drain_timeout
    assert cmd[0] == "sleep" and drain > 0 and pod["terminationGracePeriodSeconds"] > int(cmd[1]) + drain


# -- the config --------------------------------------------------------------------------------------------
def test_configmap_config_loads_with_the_gateways_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, gateway_config())
    secret = real_secret()
    with pytest.raises(ConfigError, match="UPSTREAM_API_KEY is not set"):  # outside a pod: no Secret
        load_settings(path)
    for name, value in pod_env(secret).items():
        monkeypatch.setenv(name, value)
    settings = load_settings(path)
    # a backend's key reaches it from the Secret, through the variable its api_key_env names
    keyed = [b for b in settings.backends if b.api_key_env]
    assert keyed and all(b.api_key is not None and b.api_key.get_secret_value() == secret["upstream-api-key"]
                         for b in keyed)
    assert settings.server.host == "0.0.0.0" and settings.backends and settings.models
    for b in settings.backends:  # in-cluster Service names, not loopback
        host = httpx.URL(b.url).host
        assert "." not in host or host.endswith((".svc", ".svc.cluster.local")), b.url
    # state.redis names the Redis Service; the pods carry the variable auth.secret_env names
    (rport,) = find(all_objects(), "Service", "llm-gateway-redis")["spec"]["ports"]
    redis_url = httpx.URL(settings.state.redis or "")
    assert (redis_url.scheme, redis_url.host, redis_url.port) == ("redis", "llm-gateway-redis", rport["port"])
    assert settings.auth.secret_env in pod_env(secret_data())


@pytest.mark.parametrize("env_name", ["GATEWAY_AUTH__API_KEYS", "GATEWAY_AUTH__ADMIN_KEYS"])
def test_each_secret_placeholder_stops_the_gateway(env_name: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Applied unedited, each of the Secret's key lists stops the gateway at start (placeholders are refused)."""
    path = write(tmp_path, gateway_config())
    real, placeholder = pod_env(real_secret()), pod_env(secret_data())
    for name, value in real.items():
        monkeypatch.setenv(name, placeholder[name] if name == env_name else value)
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings(path)
    monkeypatch.setenv(env_name, real[env_name])
    assert load_settings(path).auth.api_keys


# -- a real gateway serving the ConfigMap's config --------------------------------------------------------
@pytest.fixture(scope="module")
def redis_server(module_spawn: Spawner) -> dict[str, Any]:
    """redis-server run with the Redis container's arguments (its port and data directory on loopback)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed (.ci/run installs it): the Redis arguments were not run")
    c = containers(find(all_objects(), "StatefulSet", "llm-gateway-redis"))[0]
    args, port, data = list(c["args"]), free_port(), module_spawn.tmp / "redis-data"
    data.mkdir()
    assert args[0] == "redis-server"
    args[0] = server
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = str(data)
    client = start_redis(module_spawn, args, port)
    return {"client": client, "port": port, "data": data, "container": c}


@pytest.fixture(scope="module")
def served(module_spawn: Spawner, redis_server: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap's config with its URLs pointed at loopback: the first backend at a double serving its
    models, the rest at a closed port, state.redis at the real redis-server; and the same config with every
    backend closed. Keys come in as the Deployment's env does."""
    config = yaml.safe_load(gateway_config())
    if config.get("state", {}).get("redis"):  # the Service's address -> the loopback server, same database
        db = httpx.URL(config["state"]["redis"]).path or "/0"
        config["state"]["redis"] = f"redis://127.0.0.1:{redis_server['port']}{db}"
    first = config["backends"][0]["name"]
    served_models = {ref["model"] for m in config["models"] for ref in m["backends"] if ref["backend"] == first}
    double = module_spawn.double("k8s-" + first, ",".join(sorted(served_models)))
    closed = f"http://127.0.0.1:{free_port()}"
    dead = copy.deepcopy(config)
    for b, d in zip(config["backends"], dead["backends"]):
        b["url"], d["url"] = double.url if b["name"] == first else closed, closed
    secret = real_secret()
    env = pod_env(secret)
    return {"gw": pod_gateway(module_spawn, config, env), "dead": pod_gateway(module_spawn, dead, env),
            "key": json.loads(secret["api-keys"])[0], "model": config["models"][0], "first": first,
            "config": config, "env": env, "admin_keys": secret["admin-keys"]}


def probe(kind: str) -> str:
    return gateway_container()[kind]["httpGet"]["path"]


def test_liveness_and_startup_probes_are_answered_by_a_real_gateway(served: dict[str, Any]) -> None:
    for gw in (served["gw"], served["dead"]):  # alive even when no backend is
        for kind in ("livenessProbe", "startupProbe"):
            r = httpx.get(gw.url + probe(kind), timeout=5)
            assert r.status_code == 200 and r.json() == {"status": "ok"}, (kind, r.status_code, r.text)


def test_readiness_probe_is_200_with_a_ready_backend_and_503_without(served: dict[str, Any]) -> None:
    gw, dead = served["gw"], served["dead"]
    path = probe("readinessProbe")
    r = wait_status(gw.url + path, 200)
    assert r.status_code == 200 and r.json() == {"status": "ready"}, r.text  # no backend names without a key
    named = httpx.get(gw.url + path, headers={"Authorization": f"Bearer {served['key']}"}, timeout=5).json()
    assert named["backends"].pop(served["first"]) == "ready", named
    assert named["backends"] and "ready" not in named["backends"].values(), named
    # Kubernetes counts 200-399 as success: a pod without a usable backend is out of the Service
    r = httpx.get(dead.url + path, timeout=5)
    assert r.status_code == 503 and r.json()["status"] == "not_ready", r.text


def test_scrape_annotations_point_at_the_metrics(served: dict[str, Any]) -> None:
    ann = find(all_objects(), "Deployment", "llm-gateway")["spec"]["template"]["metadata"]["annotations"]
    r = httpx.get(served["gw"].url + ann["prometheus.io/path"], timeout=5)  # no key, as Prometheus scrapes
    assert r.status_code == 200 and "llm_gateway_" in r.text and r.headers["content-type"].startswith("text/plain")


def test_the_config_serves_its_model_with_a_key_from_the_secret(served: dict[str, Any]) -> None:
    gw: Gateway = served["gw"]
    wait_status(gw.url + "/readyz", 200)
    body = {"model": served["model"]["aliases"][0], "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.v1 + "/chat/completions", json=body, timeout=30).status_code == 401
    r = httpx.post(gw.v1 + "/chat/completions", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {served['key']}"})
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == served["first"], r.text


def test_idle_gateway_fits_its_memory_request(served: dict[str, Any]) -> None:
    status = Path(f"/proc/{served['gw'].proc.popen.pid}/status").read_text()
    rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    request = gateway_container()["resources"]["requests"]["memory"]
    assert request.endswith("Mi")
    assert rss_kib / 1024 < int(request.removesuffix("Mi")), (rss_kib // 1024, request)


# -- Redis's arguments, run by a real redis-server -----------------------------------------------------------
def test_redis_container_args_start_a_real_redis_server(redis_server: dict[str, Any], spawn: Spawner) -> None:
    client, c = redis_server["client"], redis_server["container"]
    conf = {k: client.config_get(k)[k] for k in ("appendonly", "maxmemory-policy", "protected-mode", "save")}
    assert conf == {"appendonly": "yes", "maxmemory-policy": "noeviction", "protected-mode": "no", "save": ""}
    assert int(client.config_get("maxmemory")["maxmemory"]) == 192 * 1024 * 1024
    client.incr("k8s-test")
    assert any(redis_server["data"].rglob("*.aof")), "no append-only file in --dir"
    cmd = c["readinessProbe"]["exec"]["command"]
    assert cmd[:2] == ["sh", "-c"] and " -p 6379 " in cmd[2]
    ok = subprocess.run([*cmd[:2], cmd[2].replace(" 6379 ", f" {redis_server['port']} ")], timeout=10)
    assert ok.returncode == 0
    # a Redis answering PING with an error (NOAUTH here, LOADING while it replays its file) is not ready
    port = free_port()
    start_redis(spawn, [str(shutil.which("redis-server")), "--port", str(port), "--requirepass", "k8s" * 6,
                        "--save", ""], port, password="k8s" * 6)
    denied = subprocess.run([*cmd[:2], cmd[2].replace(" 6379 ", f" {port} ")], timeout=10, capture_output=True)
    assert denied.returncode != 0 and b"NOAUTH" in subprocess.run(
        ["redis-cli", "-p", str(port), "ping"], capture_output=True, timeout=10).stdout


# -- two replicas, one limit ---------------------------------------------------------------------------------
def named_key_example(env: dict[str, str], rpm: int) -> tuple[str, dict[str, Any]]:
    """The ConfigMap's commented `auth.keys` example, uncommented, with a key made as the README says:
    `llm-gateway keys new` run with the Secret's key-secret."""
    block = re.search(r"^# auth:\n(?:#   .*\n)+", gateway_config(), re.M)
    assert block is not None, "the ConfigMap's named-key example is gone"
    (entry,) = yaml.safe_load(re.sub(r"^# ", "", block.group(0), flags=re.M))["auth"]["keys"]
    out = subprocess.run([sys.executable, "-m", "gateway", "keys", "new", entry["name"]], cwd=ROOT, timeout=60,
                         capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    key = next(ln for ln in out.stdout.splitlines() if ln.startswith("sk-"))
    (made,) = yaml.safe_load("\n".join(ln for ln in out.stdout.splitlines() if not ln.startswith(("#", "sk-"))))
    return key, {**entry, "hash": made["hash"], "limits": {**entry["limits"], "rpm": rpm}}


def test_two_replicas_enforce_one_limit_through_the_configs_redis(served: dict[str, Any],
                                                                   module_spawn: Spawner) -> None:
    """state.redis as the ConfigMap sets it (pointed at the real redis-server): a key allowed `rpm` requests a
    minute gets exactly that many across two replicas, not that many per replica."""
    rpm = 3
    key, entry = named_key_example(served["env"], rpm)
    config = copy.deepcopy(served["config"])
    config.setdefault("auth", {})["keys"] = [entry]
    replicas = [pod_gateway(module_spawn, config, served["env"]) for _ in range(2)]
    for gw in replicas:
        assert wait_status(gw.url + "/readyz", 200).status_code == 200
    model = next(m for m in [served["model"]["name"], *served["model"]["aliases"]] if fnmatch(m, entry["models"][0]))
    codes = []
    for i in range(2 * rpm + 2):  # alternate, as a Service spreads connections
        r = httpx.post(replicas[i % 2].v1 + "/chat/completions", timeout=30, headers={"Authorization": f"Bearer {key}"},
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-limit-requests"] == str(rpm)
    assert codes.count(200) == rpm and codes.count(429) == rpm + 2, codes
    # usage too: each replica reports every success, both replicas' (a replica counting alone sees only its own)
    admin = {"Authorization": f"Bearer {json.loads(served['admin_keys'])[0]}"}
    for gw in replicas:
        deadline = time.monotonic() + 10  # written every second
        while True:
            totals = httpx.get(gw.url + "/admin/usage", params={"key": entry["name"]}, headers=admin, timeout=5)
            assert totals.status_code == 200, totals.text
            t = totals.json()["totals"]
            if t["requests"] - t["errors"] == codes.count(200) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert t["requests"] - t["errors"] == codes.count(200) and t["completion_tokens"] > 0, t
