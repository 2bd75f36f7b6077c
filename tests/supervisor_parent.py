"""A stand-in for the gateway in the no-orphan tests (tests/test_supervisor_child.py): it brings up a launch
through its recipe (e.g. llama-server) and starts the given commands as supervisor Children, says "UP" and
then waits to be killed. Its whole process tree is what must be gone after it dies.

    python -m tests.supervisor_parent '{"launch": {"kind": K, "params": {LaunchParams}} | null,
                                        "commands": [[argv], ...], "grace": S}'
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from gateway.recipes.plan import LaunchParams, build
from gateway.supervisor.child import Child
from gateway.supervisor.launcher import bring_up
from gateway.supervisor.logs import LogRing


async def main(spec: dict) -> None:  # type: ignore[type-arg]
    logs = LogRing()
    if spec.get("launch"):
        launch = build(spec["launch"]["kind"], LaunchParams(**spec["launch"]["params"]))
        await bring_up(launch, logs, stall_timeout=60, orphan_grace=float(spec.get("grace", 3)))
    said = LogRing()
    for i, argv in enumerate(spec["commands"]):
        child = Child(f"cmd{i}", argv, dict(os.environ), said, orphan_grace=float(spec.get("grace", 3)))
        await child.start()
    while said.count < len(spec["commands"]):    # each command says it is up (one line each)
        await asyncio.sleep(0.02)
    sys.stdout.write("UP\n")
    sys.stdout.flush()
    await asyncio.sleep(1e6)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
