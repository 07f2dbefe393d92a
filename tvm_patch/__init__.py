"""tvm_patch: patch-based inference for microcontrollers, on Apache TVM (Relax and TIR)."""

from .analysis.profile import profile
from .build import build, load, pipeline
from .frontend import read
from .graph import ModelError, UnsupportedOperator

from .schedule import Block, Schedule, schedule_of

__all__ = ["load", "read", "build", "pipeline", "profile", "Schedule", "Block", "schedule_of",
           "ModelError", "UnsupportedOperator"]
__version__ = "0.1.0"
