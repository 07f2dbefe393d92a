"""Schedules as data (schedule.py), the regions of a fused block (regions.py), the arena
planner (arena.py), the cost of a (graph, schedule) (cost.py) and the search (search.py).
Nothing here compiles: the passes lower what these modules plan."""

from .cost import Cost, CostModel
from .schedule import Block, Schedule, fingerprint, parse, read_schedule, schedule_of
from .search import Search, choose

__all__ = ["Block", "Schedule", "Cost", "CostModel", "Search", "choose", "fingerprint",
           "parse", "read_schedule", "schedule_of"]
