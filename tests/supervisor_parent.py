"""A stand-in for the gateway in the no-orphan tests (tests/test_supervisor_child.py): it brings up a
llama-server through its recipe and starts the given commands as supervisor Children, says "UP" and then
waits to be killed. Its whole process tree is what must be gone after it dies.

    python -m tests.supervisor_parent '{"llama": [BINARY, MODEL, PORT] | null, "commands": [[argv], ...]}'
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
    if spec.get("llama"):
        binary, model, port = spec["llama"]
        await bring_up(build("llamacpp", LaunchParams(model=model, host="127.0.0.1", port=port, gpus=[],
                                                      context=256, binary=binary)), logs, stall_timeout=20)
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
