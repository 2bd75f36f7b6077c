"""`llm-gateway compose --config FILE`: a whole compose file from a gateway config.

Each backend with a `launch:` block becomes its recipe's compose services (render.compose_services, service
named after the backend), listening on its url's port. The gateway service mounts the config; Prometheus
scrapes the gateway and the engines whose /metrics a second reader may read; Grafana shows the dashboards.

URLs: inside compose the gateway reaches a launched backend at `http://<service>:<port>`. When every launched
backend's url is already that, the config file is mounted as it is. Otherwise the compose file carries a copy
of the config with those urls rewritten (a compose `configs:` entry with `content:`), and the file itself is
not mounted; a config holding literal keys is then refused, so no secret is copied into the compose file.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config_loader import ConfigError, load_settings, read_yaml
from gateway.recipes.catalog import RecipeError
from gateway.recipes.fit import check
from gateway.recipes.plan import Launch, build
from gateway.recipes.render import compose_services
from gateway.settings import BackendSettings, GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
CONFIG_IN_IMAGE = "/etc/llm-gateway/gateway.yaml"
# Engines Prometheus may scrape beside the gateway's probes. Not llama.cpp: llama-server's /metrics gauges
# are averaged over the window between two reads and reset by each read (deploy/prometheus/prometheus.yml).
SCRAPED_KINDS = ("vllm", "tgi")
RESERVED = ("gateway", "prometheus", "grafana")
PROMETHEUS_IMAGE = "prom/prometheus:v3.5.0"
GRAFANA_IMAGE = "grafana/grafana:12.0.0"


class ComposeError(ValueError):
    """The config cannot be rendered as a compose file (one line)."""


@dataclass
class Rendered:
    launches: dict[str, Launch] = field(default_factory=dict)   # backend name -> its container launch
    services: dict[str, Any] = field(default_factory=dict)
    volumes: dict[str, Any] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)          # backend name -> url inside compose


def _launch(b: BackendSettings) -> Launch:
    assert b.launch is not None
    try:
        return build(b.kind, b.launch.params(b.name, b.url, "container"), "container")
    except RecipeError as exc:
        raise ComposeError(f"backends {b.name}: launch: {exc}") from None


def _backends(settings: GatewaySettings) -> Rendered:
    out = Rendered()
    for b in settings.backends:
        if b.launch is None:
            continue
        launch = _launch(b)
        frag = compose_services(launch)
        for name, svc in frag["services"].items():
            if name in RESERVED or name in out.services:
                raise ComposeError(f"backends {b.name}: its compose service {name!r} is taken; rename the backend")
            if b.launch.profiles:
                svc["profiles"] = list(b.launch.profiles)
            out.services[name] = svc
        out.volumes.update(frag.get("volumes", {}))
        out.launches[b.name] = launch
        out.urls[b.name] = launch.backend_url
    return out


def _rel(path: Path, base: Path) -> str:
    rel = os.path.relpath(path.resolve(), base.resolve())
    return "." if rel == "." else rel if rel.startswith("..") else "./" + rel


def _has_secrets(raw: dict[str, Any]) -> str | None:
    auth = raw.get("auth") or {}
    for key in ("api_keys", "admin_keys"):
        if auth.get(key):
            return f"auth.{key}"
    for i, k in enumerate(auth.get("keys") or []):
        if isinstance(k, dict) and k.get("key"):     # a named key's plaintext (its `hash:` is fine to copy)
            return f"auth.keys[{i}].key"
    for i, b in enumerate(raw.get("backends") or []):
        if isinstance(b, dict) and b.get("api_key"):
            return f"backends[{i}].api_key"
    return None


def _gateway(settings: GatewaySettings, raw: dict[str, Any], config: Path, base: Path,
             r: Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gateway service and the top-level `configs` it needs."""
    port = settings.server.port
    svc: dict[str, Any] = {
        "build": {"context": _rel(ROOT, base), "dockerfile": "deploy/Dockerfile"},
        "command": ["serve", "--config", CONFIG_IN_IMAGE, "--host", "0.0.0.0", "--port", str(port)],
        "ports": [f"{port}:{port}"],
    }
    configs: dict[str, Any] = {}
    moved = {b.name: r.urls[b.name] for b in settings.backends if b.name in r.urls and b.url != r.urls[b.name]}
    if not moved:
        svc["volumes"] = [f"{_rel(config, base)}:{CONFIG_IN_IMAGE}:ro"]
    else:
        if where := _has_secrets(raw):
            raise ComposeError(f"{config}: {where}: the backend urls must be rewritten for compose, which copies the "
                               "config into the compose file; give keys through the environment instead "
                               "(LLM_GATEWAY_API_KEY), or set each launched backend's url to its service "
                               f"({', '.join(f'{n}: {u}' for n, u in moved.items())})")
        copy = dict(raw)
        copy["backends"] = [{**b, "url": moved[b["name"]]} if b.get("name") in moved else b
                            for b in raw.get("backends") or []]
        text = yaml.safe_dump(copy, sort_keys=False, width=1000)
        configs["gateway-config"] = {"content": text.replace("$", "$$")}   # compose interpolates `$`
        svc["configs"] = [{"source": "gateway-config", "target": CONFIG_IN_IMAGE}]
    svc["environment"] = {
        # A key is required: `LLM_GATEWAY_API_KEY=$(openssl rand -hex 24) docker compose up`. Admin endpoints
        # stay off unless LLM_GATEWAY_ADMIN_KEYS='["<another key>"]' is set (README "Security").
        "GATEWAY_AUTH__API_KEYS": '["${LLM_GATEWAY_API_KEY:?set LLM_GATEWAY_API_KEY to a random key of 16+ '
                                  'characters}"]',
        "GATEWAY_AUTH__ADMIN_KEYS": "${LLM_GATEWAY_ADMIN_KEYS:-[]}",
        # Compose runs the launched backends as containers: the gateway must not run them too.
        "GATEWAY_SUPERVISOR__ENABLED": "false",
    }
    # deploy/Dockerfile's HEALTHCHECK, on this port
    svc["healthcheck"] = {"test": ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen("
                                   f"'http://127.0.0.1:{port}/healthz', timeout=4)"],
                          "interval": "10s", "timeout": "5s", "retries": 3, "start_period": "15s"}
    # Every launched server; `required: false`: a backend whose profile is not enabled is not waited for.
    deps = {p.service: {"condition": "service_healthy", "required": False}
            for launch in r.launches.values() for p in launch.plans}
    if deps:
        svc["depends_on"] = deps
    svc["restart"] = "unless-stopped"
    return svc, configs


def prometheus_config(settings: GatewaySettings, r: Rendered) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its targets replaced by this stack's: the gateway, and each
    launched vLLM/TGI server at its service and port."""
    base = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs: list[dict[str, Any]] = [{"job_name": "llm-gateway",
                                   "static_configs": [{"targets": [f"gateway:{settings.server.port}"]}]}]
    for launch in r.launches.values():
        if launch.kind not in SCRAPED_KINDS:
            continue
        for plan in launch.plans:
            if plan.metrics_path:
                job: dict[str, Any] = {"job_name": plan.service}
                if plan.metrics_path != "/metrics":
                    job["metrics_path"] = plan.metrics_path
                job["static_configs"] = [{"targets": [f"{plan.service}:{plan.port}"]}]
                jobs.append(job)
    return {"global": base["global"], "rule_files": base["rule_files"], "scrape_configs": jobs}


def _observability(base: Path, prom: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    deploy = ROOT / "deploy"
    prometheus = {
        "image": PROMETHEUS_IMAGE,
        # the scrape config is generated (configs: prometheus-config); the alert rules are deploy/prometheus's
        "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
        "ports": ["9090:9090"],
        "configs": [{"source": "prometheus-config", "target": "/etc/prometheus/prometheus.yml"}],
        "volumes": [f"{_rel(deploy / 'prometheus' / rule, base)}:/etc/prometheus/{rule}:ro"
                    for rule in prom["rule_files"]],
        "restart": "unless-stopped",
    }
    grafana = {
        # Provisioned on first start: the Prometheus data source and the dashboards of deploy/grafana/
        # (README "Dashboards"). Anyone reaching port 3000 may view them; editing needs the admin password.
        "image": GRAFANA_IMAGE,
        "ports": ["3000:3000"],
        "environment": {
            "GF_SECURITY_ADMIN_PASSWORD":
                "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD for Grafana's admin user}",
            "GF_AUTH_ANONYMOUS_ENABLED": "true",
            "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
            "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": "/etc/grafana/dashboards/llm-gateway-overview.json",
        },
        "volumes": [f"{_rel(deploy / 'grafana' / 'provisioning', base)}:/etc/grafana/provisioning:ro",
                    f"{_rel(deploy / 'grafana' / 'dashboards', base)}:/etc/grafana/dashboards:ro"],
        "depends_on": ["prometheus"],
        "restart": "unless-stopped",
    }
    configs = {"prometheus-config": {"content": yaml.safe_dump(prom, sort_keys=False, width=1000)}}
    return {"prometheus": prometheus, "grafana": grafana}, configs


def check_fits(settings: GatewaySettings, r: Rendered, gpu_memory: str, force: bool) -> list[str]:
    """Size each launch (gateway.recipes.fit) on GPUs of `gpu_memory` each: one that will not fit is an error,
    or with `force` a warning; one that cannot be sized (CPU, a model the estimator does not know) a note."""
    warnings: list[str] = []
    for b in settings.backends:
        if b.launch is None:
            continue
        gpus = next((p.gpus for p in r.launches[b.name].plans if p.gpus), [])
        try:
            fits, why = check(b.kind, b.launch.params(b.name, b.url, "container"), gpus, gpu_memory)
        except RecipeError as exc:
            raise ComposeError(str(exc)) from None
        if fits is False:
            if not force:
                raise ComposeError(f"backends {b.name}: {why} (--force renders it anyway)")
            warnings.append(f"backends {b.name}: {why}")
        elif fits is None:
            warnings.append(f"backends {b.name}: fit not checked: {why}")
    return warnings


def render(config: Path, out_dir: Path, gpu_memory: str | None = None, force: bool = False,
           warnings: list[str] | None = None) -> dict[str, Any]:
    """The compose document for `config`; relative paths in it are from `out_dir` (the compose file's).
    With `gpu_memory` (each GPU's size) every launch is sized first; `warnings` collects what --force let by."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise ComposeError("; ".join(line.strip() for line in str(exc).splitlines())) from None
    raw = read_yaml(config)
    r = _backends(settings)
    if not r.launches:
        raise ComposeError(f"{config}: no backend has a launch: block; nothing to run")
    if gpu_memory:
        (warnings if warnings is not None else []).extend(check_fits(settings, r, gpu_memory, force))
    gateway, configs = _gateway(settings, raw, config, out_dir, r)
    prom = prometheus_config(settings, r)
    obs, obs_configs = _observability(out_dir, prom)
    doc: dict[str, Any] = {"name": "llm-gateway", "services": {"gateway": gateway, **r.services, **obs}}
    if r.volumes:
        doc["volumes"] = r.volumes
    doc["configs"] = {**configs, **obs_configs}
    return doc


def header(config: Path, out_dir: Path) -> str:
    rel = _rel(config, out_dir).removeprefix("./")
    return (f"# Generated by `llm-gateway compose --config {rel}`: edit that file and re-run, not this one.\n"
            "# `LLM_GATEWAY_API_KEY=... GRAFANA_ADMIN_PASSWORD=... docker compose up`: the gateway (port 4000),\n"
            "# the backends without a profile, Prometheus (9090) and Grafana (3000). Other backends: --profile NAME.\n")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the embedded configs) as `|` blocks, readable in the compose file."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s
                                                              else None))


def dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.error = _fail  # type: ignore[method-assign]  # one line, not argparse's usage block
    p.add_argument("--config", "-c", required=True, help="gateway config whose backends carry launch: blocks")
    p.add_argument("--out", "-o", help="write the compose file here (default: stdout; paths relative to the "
                   "current directory)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="memory of each GPU of the target box (24GiB, 80GB): "
                   "size every launch first and refuse one that will not fit")
    p.add_argument("--force", action="store_true", help="render even a launch that will not fit (a warning)")


def _fail(message: str) -> None:
    sys.stderr.write(f"llm-gateway compose: {message}\n")
    raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    out_dir = out.parent if out else Path.cwd()
    config = Path(args.config)
    try:
        warnings: list[str] = []
        doc = render(config, out_dir, args.gpu_memory, args.force, warnings)
    except ComposeError as exc:
        _fail(str(exc))
    for w in warnings:
        sys.stderr.write(f"llm-gateway compose: {'' if 'fit not checked' in w else 'warning: '}{w}\n")
    text = header(config, out_dir) + dump(doc)
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            out.write_text(text)
        except OSError as exc:
            _fail(f"cannot write {out}: {exc.strerror}")
    return 0
