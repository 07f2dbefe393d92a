"""The memory plan of a built Relax module: its `main` read back as calls and planned by
schedule/arena.py, the same planner the schedule's cost model uses."""

from __future__ import annotations

from ..passes.emit import calls_of  # noqa: F401  (the module's calls, as planned)
from ..schedule.arena import (ALIGN, Buffer, Call, Plan, Step, largest_steps,  # noqa: F401
                              place, plan_calls)


def plan_memory(mod, exclude_io: bool = False) -> Plan:
    """The plan for mod["main"]; exclude_io leaves model inputs and outputs out of the
    arena (the rule TVM's workspace, msf-CNN and MCUNetV2's 172 kB figure use)."""
    params, calls, outputs = calls_of(mod)
    return plan_calls(params, calls, outputs, exclude_io)

