"""The memory-aware tuner: the fastest schedule and kernel knobs of a model whose arena fits
an SRAM budget and whose firmware fits a Flash budget, measured on the emulated Cortex-M7.
The space (space.py), measurements in parallel (measure.py), the XGBoost cost model
(model.py) and the search (tuner.py); its records are schedule/records.py (the passes
apply them too).

    from tvm_patch import tune
    result = tune.tune("vww1.tflite", sram=64 * 1024, trials=64)
    result.best.schedule, result.best.instructions
    mod = tvm_patch.load("vww1.tflite")
    fw = mcu.compile(mod, "qemu-m7", "build", records=result.records)
"""

from __future__ import annotations

from ..graph import ModelError
from ..schedule.records import best, read_records
from .tuner import STRATEGIES, Result, Tuner, default_records_path


def tune(model, sram: int | None = None, flash: int | None = None, trials: int = 64,
         records: str | None = None, jobs: int = 2, ray: str | None = None,
         objective: str = "arena", strategy: str = "model", seed: int = 0,
         progress: bool = False, io_type: str | None = None, **options) -> Result:
    """Tunes `model` (a .tflite/.onnx path or its bytes); appends every measurement to
    `records` (default schedules/<model>.jsonl) and returns the trials and the best."""
    from ..frontend import read
    from ..passes.emit import to_relax
    if isinstance(model, (bytes, bytearray)):
        data, path = bytes(model), ""
    else:
        path = str(model)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelError(f"{path}: cannot read the model ({e.strerror})") from None
    graph = read(data, io_type)
    tuner = Tuner(data, graph, to_relax(graph), sram, flash, objective, strategy, seed, io_type)
    return tuner.run(trials, records or default_records_path(path), jobs, ray,
                     progress=progress, **options)


__all__ = ["Result", "STRATEGIES", "Tuner", "best", "read_records", "tune"]
