"""The gateway runs launched backends itself (README "Running backends").

Process layer: logs.py (LogRing: a child's last output lines, bounded by lines and bytes), reaper.py (the
stdlib-only wrapper every child runs under: parent-death signal, subreaper, the program in its own process
group, so killing the gateway leaves no process behind), child.py (Child: one process under the reaper,
output read into the ring, stopped as a group with SIGTERM then SIGKILL), launcher.py (bring_up: a rendered
Launch started plan by plan, ready when its ready URL answers 2xx, post-start steps, start-up judged by
progress; StartFailed with the last log lines).
Policy layer: managed.py (one launched backend's states, start/stop/crash/idle), swap.py (swap groups: one
member running at a time), placement.py (VRAM check before a start), service.py (all of them in the gateway).
"""
