"""tvm_patch: patch-based inference for microcontrollers, on Apache TVM (Relax and TIR)."""

from .analysis.profile import profile
from .build import build, pipeline
from .frontend import load, read
from .graph import ModelError, UnsupportedOperator

__all__ = ["load", "read", "build", "pipeline", "profile", "ModelError", "UnsupportedOperator"]
__version__ = "0.1.0"
