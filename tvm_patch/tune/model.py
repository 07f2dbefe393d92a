"""The tuner's cost model: instructions per unit (tune/space.py: a layer with its kernel, a
block with its grid, halo and kernel) predicted by XGBoost from features of the lowered TIR
and the knobs, trained online on what the emulator measured. A point's prediction is the sum
over its units, where a unit already measured counts at its measured value (units do not
depend on each other), plus the firmware's per-inference constant.

Features of a unit: the knobs (kernel, grid, halo, tiles), its MACs as the plan computes
them (recomputed halos included), shapes, and MetaSchedule's per-store features of the
operators' lowered TIR (tvm.s_tir.meta_schedule's PerStoreFeature, the features of TVM's own
XGBoost cost model; it counts integer multiply-adds apart from float ones), summed over the
stores. A block's operators count with the share of their MACs the block computes."""

from __future__ import annotations

import math

import numpy as np

from ..graph import Graph
from ..kernels.ops import macs as op_macs
from ..schedule.regions import _stage_macs
from .space import Space, Unit

KINDS = ("conv2d", "depthwise_conv2d", "add", "quantize", "dequantize", "avg_pool2d",
         "max_pool2d", "mean", "fully_connected", "pad")


def tir_features(func) -> np.ndarray:
    """MetaSchedule's per-store features of a PrimFunc, summed over its stores (log-scaled
    counts; one row per written buffer)."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    candidate = ms.MeasureCandidate(s_tir.Schedule(mod), ms.arg_info.ArgInfo.from_prim_func(
        func))
    feats = ms.feature_extractor.PerStoreFeature(extract_workload=False).extract_from(
        _context(), [candidate])[0].numpy()
    return np.log1p(np.abs(feats)).sum(axis=0)


_tune_context = None


def _context():
    """A bare TuneContext for the extractor (which reads none of it but the target), made
    through its FFI constructor: TuneContext() first imports tvm.s_tir.tensor_intrin, which
    parses every GPU and CPU tensor intrinsic in TVMScript (40 s here)."""
    global _tune_context
    if _tune_context is None:
        import tvm
        from tvm.s_tir import meta_schedule as ms
        from tvm.s_tir.meta_schedule import _ffi_api
        from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func
        _primtype_hooks_fix()
        context = ms.TuneContext.__new__(ms.TuneContext)
        context.__init_handle_by_constructor__(
            _ffi_api.TuneContext, None, tvm.target.Target({"kind": "llvm"}), None, None,
            "main", 1, -1, get_logging_func(get_logger(__name__)))
        _tune_context = context
    return _tune_context


_fixed = False


def _primtype_hooks_fix() -> None:
    """TVM 0.27.0.post1 registers hash and equality hooks on ir.PrimType with the old return
    types; apache-tvm-ffi 0.1.15 calls them expecting a TVMFFIAny, reads garbage, and the
    process dies while unwinding. The extractor deep-copies the module through JSON, which
    hashes every PrimType. Clearing the two hooks (PrimTypes then hash by identity, as the
    FFI's default does) makes it work; with fixed packages the hooks are not raw pointers and
    this does nothing."""
    global _fixed
    if _fixed:
        return
    import ctypes
    import os

    import tvm_ffi
    from tvm_ffi.core import _object_type_key_to_index

    class Any(ctypes.Structure):
        _fields_ = [("type_index", ctypes.c_int32), ("pad", ctypes.c_uint32),
                    ("v", ctypes.c_int64)]

    class ByteArray(ctypes.Structure):
        _fields_ = [("data", ctypes.c_char_p), ("size", ctypes.c_size_t)]

    class Column(ctypes.Structure):
        _fields_ = [("data", ctypes.POINTER(Any)), ("size", ctypes.c_int32),
                    ("begin_index", ctypes.c_int32)]

    lib = ctypes.CDLL(os.path.join(os.path.dirname(tvm_ffi.__file__), "lib", "libtvm_ffi.so"))
    lib.TVMFFIGetTypeAttrColumn.restype = ctypes.POINTER(Column)
    lib.TVMFFIGetTypeAttrColumn.argtypes = [ctypes.POINTER(ByteArray)]
    index = _object_type_key_to_index("ir.PrimType")
    for attr in (b"__any_hash__", b"__any_equal__"):
        column = lib.TVMFFIGetTypeAttrColumn(ctypes.byref(ByteArray(attr, len(attr))))
        if not column:
            continue
        col = column.contents
        if col.begin_index <= index < col.begin_index + col.size:
            slot = col.data[index - col.begin_index]
            if slot.type_index == 4:  # kTVMFFIOpaquePtr: a raw C function of the old ABI
                slot.type_index, slot.v = 0, 0
    _fixed = True


class UnitFeatures:
    """Feature vectors of a space's units (cached: a search asks for the same units often)."""

    def __init__(self, space: Space, funcs: dict):
        self.space, self.graph = space, space.graph
        self.funcs = funcs                      # position -> the operator's PrimFunc
        self._tir, self._cache = {}, {}

    def op_tir(self, pos: int) -> np.ndarray:
        if pos not in self._tir:
            func = self.funcs.get(pos)
            self._tir[pos] = tir_features(func) if func is not None else None
        return self._tir[pos]

    def __call__(self, unit: Unit) -> np.ndarray:
        if unit.key not in self._cache:
            self._cache[unit.key] = self._features(unit)
        return self._cache[unit.key]

    def _features(self, unit: Unit) -> np.ndarray:
        graph: Graph = self.graph
        ops = graph.ops[unit.first:unit.last + 1]
        if unit.kind == "block":
            stage = self.space.model.block(unit.block)
            share = {id(op): (_stage_macs(stage, op, graph) / m if (m := op_macs(op, graph))
                              else float(stage.grid[0] * stage.grid[1])) for op in ops}
            macs, tiles = stage.macs, stage.grid[0] * stage.grid[1]
            head = [1.0, unit.grid[0], unit.grid[1], tiles, float("cache" in unit.halo),
                    stage.workspace, stage.mac_overhead]
        else:
            share = {id(ops[0]): 1.0}
            macs, tiles = op_macs(ops[0], graph), 1
            head = [0.0, 1, 1, 1, 0.0, self.space.model.scratch_of(unit.first), 1.0]
        kinds = np.zeros(len(KINDS) + 1)
        tir = None
        for pos, op in enumerate(ops, unit.first):
            kinds[KINDS.index(op.kind) if op.kind in KINDS else -1] += \
                max(op_macs(op, graph), 1) * share[id(op)]
            f = self.op_tir(pos)
            if f is not None:
                tir = f * share[id(op)] if tir is None else tir + f * share[id(op)]
        out = graph.t(ops[-1].outputs[0])
        window = [1, 1, 1]
        conv = next((op for op in ops if op.kind in ("conv2d", "depthwise_conv2d")), None)
        if conv is not None:
            wt = graph.t(conv.inputs[1])
            window = [int(wt.shape[1]), int(wt.shape[2]), int(conv.attrs["stride"][0])]
        vec = [float(unit.kernel == "c"), *head, math.log1p(macs), macs / tiles, len(ops),
               math.log1p(int(np.prod(out.shape))), *window, *np.log1p(kinds)]
        if tir is None:
            tir = np.zeros(self._tir_width())
        return np.concatenate([np.asarray(vec, dtype=np.float64), tir])

    def _tir_width(self) -> int:
        for pos in self.funcs:
            f = self.op_tir(pos)
            if f is not None:
                return len(f)
        return 0


class CostModel:
    """XGBoost regression of log(instructions) per unit, retrained on every update."""

    def __init__(self, features: UnitFeatures, seed: int = 0):
        self.features, self.seed = features, seed
        self.measured = {}      # unit key -> instructions (the smallest seen)
        self.overhead = []      # total - sum of steps, per measured point
        self._units, self._booster, self._predicted = {}, None, {}

    def update(self, units: list, result: dict) -> None:
        layers = result.get("layers") or []
        if result.get("instructions") is None or len(layers) != len(units):
            return
        for u, layer in zip(units, layers):
            self.measured[u.key] = min(layer["instructions"],
                                       self.measured.get(u.key, layer["instructions"]))
            self._units[u.key] = u
        self.overhead.append(result["instructions"] - sum(la["instructions"] for la in layers))

    def train(self) -> None:
        import xgboost as xgb
        self._predicted = {}
        if len(self.measured) < 4:
            self._booster = None
            return
        keys = sorted(self.measured)
        x = np.stack([self.features(self._units[k]) for k in keys])
        y = np.log([max(self.measured[k], 1) for k in keys])
        self._booster = xgb.train(
            {"objective": "reg:squarederror", "max_depth": 5, "eta": 0.1, "subsample": 0.9,
             "seed": self.seed, "nthread": 1, "verbosity": 0},
            xgb.DMatrix(x, label=y), num_boost_round=200)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb
        return self._booster.predict(xgb.DMatrix(x))

    def unit_cost(self, unit: Unit) -> float:
        if unit.key in self.measured:
            return float(self.measured[unit.key])
        if unit.key not in self._predicted:
            if self._booster is None:  # nothing learned yet: MACs as the only signal
                self._predicted[unit.key] = 3.0 * math.expm1(self.features(unit)[8])
            else:
                self._predicted[unit.key] = float(np.exp(self._predict(
                    self.features(unit)[None, :])[0]))
        return self._predicted[unit.key]

    def predict(self, units: list) -> float:
        missing = [u for u in units if u.key not in self.measured and
                   u.key not in self._predicted]
        if missing and self._booster is not None:  # one batched call for the new ones
            pred = np.exp(self._predict(np.stack([self.features(u) for u in missing])))
            self._predicted.update({u.key: float(p) for u, p in zip(missing, pred)})
        base = float(np.median(self.overhead)) if self.overhead else 0.0
        return base + sum(self.unit_cost(u) for u in units)
