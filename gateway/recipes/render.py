"""A planned launch (plan.Launch) as shell lines and as compose services.

Secrets never appear as values: an API key is `NAME="${VAR}"` in a shell line and `${VAR:?...}` in
compose, so the key stays in the caller's environment (and out of argv, where `ps` would show it).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from gateway.recipes.plan import EnvVar, Launch, Plan, Step


def _env_word(e: EnvVar) -> str:
    if e.from_env is not None:
        return f'{e.name}="${{{e.from_env}}}"'   # expanded by the shell, never written out
    return f"{e.name}={shlex.quote(e.value or '')}"


def shell_line(plan: Plan) -> str:
    """One process as one shell line: `VAR=value ... program args` (quoted with shlex)."""
    # Pass-through variables (HF_TOKEN) are inherited from the shell already.
    env = [_env_word(e) for e in plan.env if not (e.from_env == e.name)]
    return " ".join([*env, *(shlex.quote(a) for a in plan.argv)])


def _wait_line(plan: Plan) -> str:
    post = " -X POST" if plan.ready_method == "POST" else ""
    probe = f"until curl -fsS{post} -o /dev/null {shlex.quote(plan.ready_url)}; do sleep 1; done"
    return f"timeout {plan.ready_budget_s:g} sh -c {shlex.quote(probe)}"


def step_line(step: Step) -> str:
    if step.url is not None:
        body = json.dumps(step.body, separators=(",", ":"))
        argv = ["curl", "-fsS", "--max-time", f"{step.budget_s:g}", "-X", step.method,
                "-H", "Content-Type: application/json", "-d", body, step.url]
        return " ".join(shlex.quote(a) for a in argv)
    env = [_env_word(e) for e in step.env if e.from_env is None]
    return " ".join([*env, *(shlex.quote(a) for a in step.argv)])


def shell_lines(launch: Launch) -> list[str]:
    """The launch as lines to paste into a shell: each process (in the background when something must
    follow it), a wait for its readiness, its post-start steps; a single server is one line."""
    lines: list[str] = []
    for i, plan in enumerate(launch.plans):
        background = i < len(launch.plans) - 1 or bool(plan.post_start)
        lines.append(shell_line(plan) + (" &" if background else ""))
        if background:
            lines.append(_wait_line(plan))
        lines += [step_line(s) for s in plan.post_start]
    if launch.plans[-1].post_start:
        lines.append("wait")
    return lines


def _environment(envs: list[EnvVar]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in envs:
        if e.from_env is None:
            out[e.name] = _esc(e.value or "")
        elif e.from_env == e.name:
            out[e.name] = f"${{{e.name}:-}}"                     # optional pass-through (HF_TOKEN)
        else:
            out[e.name] = f"${{{e.from_env}:?set {e.from_env}}}"  # required secret
    return out


def _esc(text: str) -> str:
    """Compose interpolates `$`: a literal dollar (a shell script's "$1") is written `$$`."""
    return text.replace("$", "$$")


def _volume(source: str, target: str, read_only: bool) -> str:
    return f"{source}:{target}" + (":ro" if read_only else "")


def _image(plan: Plan) -> dict[str, Any]:
    if plan.build:
        return {"image": plan.image, "build": {"context": plan.build}}
    return {"image": plan.image}


def compose_service(plan: Plan) -> dict[str, Any]:
    """One process as a compose service: image, command, environment, ports, volumes, healthcheck, GPUs."""
    svc: dict[str, Any] = _image(plan)
    if plan.image_argv:
        svc["command"] = [_esc(a) for a in plan.image_argv]
    env = _environment(plan.env)
    if env:
        svc["environment"] = env
    svc["ports"] = [f"127.0.0.1:{plan.port}:{plan.port}"]   # loopback: the gateway is the front door
    if plan.volumes:
        svc["volumes"] = [_volume(v.source, v.target, v.read_only) for v in plan.volumes]
    svc["healthcheck"] = {"test": [_esc(t) for t in plan.healthcheck], "interval": "10s", "timeout": "5s", "retries": 3,
                          "start_period": f"{plan.ready_budget_s:g}s"}
    if plan.gpus:
        svc["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "device_ids": [str(g) for g in plan.gpus], "capabilities": ["gpu"]}]}}}
    if plan.ipc_host:
        svc["ipc"] = "host"
    if plan.shm_size:
        svc["shm_size"] = plan.shm_size
    if plan.depends_on:
        svc["depends_on"] = {d: {"condition": "service_healthy"} for d in plan.depends_on}
    svc["restart"] = "unless-stopped"
    return svc


def _step_service(plan: Plan, step: Step) -> dict[str, Any]:
    """A post-start step as a one-shot service of the same image, once the server is healthy."""
    if step.url is not None:
        argv = shlex.split(step_line(step))
    else:
        argv = list(step.argv)
    svc: dict[str, Any] = {**_image(plan), "entrypoint": [_esc(a) for a in argv]}
    svc.pop("build", None)                 # built once, by the server's service
    env = _environment([e for e in step.env if e.from_env is None])
    if env:
        svc["environment"] = env
    if plan.volumes:
        svc["volumes"] = [_volume(v.source, v.target, v.read_only) for v in plan.volumes]
    svc["depends_on"] = {plan.service: {"condition": "service_healthy"}}
    svc["restart"] = "no"
    return svc


def compose_services(launch: Launch) -> dict[str, Any]:
    """The launch as a compose document fragment: `services` (+ the named `volumes` they use)."""
    services: dict[str, Any] = {}
    named: dict[str, Any] = {}
    for plan in launch.plans:
        services[plan.service] = compose_service(plan)
        for step in plan.post_start:
            services[f"{plan.service}-{step.name}"] = _step_service(plan, step)
        for v in plan.volumes:
            if not v.source.startswith(("/", ".", "~", "$")):
                named[v.source] = {}
    return {"services": services, **({"volumes": named} if named else {})}
