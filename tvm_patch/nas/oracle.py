"""The compiler as a cost oracle: what an architecture costs under a schedule, from its config
alone, in milliseconds: no .tflite written, no kernel lowered.

`graph_of(config)` is the graph the front end reads from the zoo's .tflite of that config
(tvm_patch.zoo), operator for operator, with shapes and dtypes but no weights;
`scratch_bytes` is each kernel's own arena space by rule (the lowered kernels measure it:
tests/test_nas.py checks the two agree); the schedule's plan is then the CostModel's, the
one the build uses. So a query's arena and arena_excl_io equal the built module's plan.

Flash is estimated: the weights, biases and per-channel requantization constants the
firmware stores (exact counts) plus a code estimate (runtime and kernel library, and a
per-operator and per-block term) fitted to the firmware link maps of benchmarks/mcu.py.
Instructions are predicted per operator from its MACs and output size, with coefficients per
operator kind fitted to the emulator measurements in the tuner's records (within 4% of the
measured layer-by-layer totals of the five models fitted)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..frontend.simplify import fold_pads, mark_inplace
from ..graph import DTYPE_BYTES, Graph, ModelError, Op, Quant, Tensor, same_padding
from ..kernels.ops import macs as op_macs
from ..schedule.arena import live_bytes, peak_live, plan_calls
from ..schedule.cost import Cost, CostModel
from ..schedule.regions import BLOCK_KINDS
from ..schedule.schedule import Block, Schedule
from ..schedule.search import single_cuts
from ..zoo.nets import NetSpec, load_config, make_divisible, spec_from_config

_ACT = {"relu6": "relu6", "relu": "relu", None: "none", "hard_swish": "none",
        "hard_sigmoid_gate": "relu"}

# Flash besides the model's constants (runtime, kernel library, startup code), and per fused
# block (its generated loop nest): fitted to the firmware of four MCUNet-format zoo models
# (benchmarks/RESULTS.md's STM32F746 table: within 4 KB each, layer by layer and patched)
CODE_BASE, CODE_PER_BLOCK = 74_000, 8_400
# instructions per MAC and per output element of the default kernels on the Cortex-M7
# emulator, least squares over the default points the tuner measured (schedules/: five
# MobileNet-style models, 235 layers; benchmarks/nas.py section 5 prints the fit)
INSTRUCTIONS = {"conv2d": (3.64, 0.0), "conv2d_1x1": (1.53, 31.4),
                "depthwise_conv2d": (3.92, 27.9), "fully_connected": (4.62, 0.0),
                "add": (0.0, 81.5), "mul": (0.0, 81.5), "mean": (0.0, 24.6),
                "softmax": (0.0, 59.2), "hard_swish": (0.0, 30.0), "reshape": (0.0, 0.0)}
BLOCK_OVERHEAD = 1.10
LEVELS_FUSED = 4  # downsampling levels Oracle.fit fuses at most  # a fused block's instructions over its layers' at the same MACs


class _Builder:
    """Writes graph operators as the front end reads the zoo's TFLite ones, tensor names
    included (the schedule's model fingerprint covers the model's input and output names)."""

    def __init__(self, resolution: int):
        self.tensors, self.ops, self.nodes, self.count = {}, [], 0, 0
        self.input = self._tensor("000_input", (1, resolution, resolution, 3))

    def _tensor(self, name, shape, dtype="int8", const=False) -> str:
        name = f"t{self.count}_{name}"
        self.count += 1
        self.tensors[name] = Tensor(name, tuple(shape), dtype, _QUANT,
                                    _NO_DATA if const else None)
        return name

    def _op(self, kind, node, inputs, shape, attrs, source, consts=(), hidden=0) -> str:
        """`node`: the zoo's node kind; `consts` (suffix, shape, dtype) become inputs after
        `inputs`; `hidden`: how many constants the front end reads as attributes (axes,
        shapes)."""
        self.nodes += 1
        name = f"{self.nodes:03d}_{node}"
        out = self._tensor(name, shape)
        inputs = inputs + [self._tensor(f"{name}_{s}", sh, dt, True) for s, sh, dt in consts]
        self.count += hidden  # constants read as attributes: numbered, not kept
        self.ops.append(Op(kind, inputs, [out], attrs, index=len(self.ops), source=source))
        return out

    def shape(self, name) -> tuple:
        return self.tensors[name].shape

    def conv(self, x, out_channels, kernel, stride, act, depthwise=False) -> str:
        _, h, w, c = self.shape(x)
        (pt, pb), (pl, pr) = same_padding(h, kernel, stride), same_padding(w, kernel, stride)
        oh, ow = -(-h // stride), -(-w // stride)
        attrs = dict(stride=(stride, stride), dilation=(1, 1), padding=(pt, pl, pb, pr))
        if depthwise:
            out_channels = c
            attrs["depth_multiplier"] = 1
        attrs["activation"] = _ACT[act]
        weights = (1, kernel, kernel, c) if depthwise else (out_channels, kernel, kernel, c)
        return self._op("depthwise_conv2d" if depthwise else "conv2d",
                        "dwconv" if depthwise else "conv", [x], (1, oh, ow, out_channels),
                        attrs, "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D",
                        consts=(("weights", weights, "int8"),
                                ("bias", (out_channels,), "int32")))

    def pointwise_or_act(self, x, channels, act) -> str:
        if act == "hard_swish":
            return self.hard_swish(self.conv(x, channels, 1, 1, None))
        return self.conv(x, channels, 1, 1, act)

    def hard_swish(self, x) -> str:
        return self._op("hard_swish", "hard_swish", [x], self.shape(x), {}, "HARD_SWISH")

    def binary(self, kind, a, b) -> str:
        return self._op(kind, kind, [a, b], self.shape(a), dict(activation="none"),
                        kind.upper())

    def mean(self, x) -> str:
        return self._op("mean", "mean", [x], (1, 1, 1, self.shape(x)[3]),
                        dict(axes=(1, 2), keep_dims=True), "MEAN",
                        hidden=1)

    def flatten(self, x) -> str:
        return self._op("reshape", "reshape", [x], (1, self.shape(x)[3]), {}, "RESHAPE",
                        hidden=1)

    def fully_connected(self, x, n) -> str:
        return self._op("fully_connected", "fc", [x], (1, n), dict(activation="none"),
                        "FULLY_CONNECTED", consts=(("weights", (n, self.shape(x)[1]), "int8"),
                                                   ("bias", (n,), "int32")))

    def softmax(self, x) -> str:
        return self._op("softmax", "softmax", [x], self.shape(x), dict(beta=1.0), "SOFTMAX")

    def squeeze_excite(self, x) -> str:
        c = self.shape(x)[3]
        gate = self.mean(x)
        gate = self.conv(gate, make_divisible(c // 4), 1, 1, "relu")
        gate = self.conv(gate, c, 1, 1, "hard_sigmoid_gate")
        return self.binary("mul", x, gate)


_QUANT = Quant(np.float32(1.0), np.int64(0))
_NO_DATA = np.zeros(0, np.int8)  # a constant's values: the oracle needs its shape only


def graph_of(config) -> Graph:
    """The graph tvm_patch.read gives for tvm_patch.zoo.build(config) (an MCUNet-format
    config: path, dict or NetSpec), without its weights."""
    spec = config if isinstance(config, NetSpec) else spec_from_config(load_config(config))
    if spec.resolution <= 0:
        raise ModelError(f"config {spec.name!r} has no resolution")
    if spec.explicit_pad:
        raise ModelError("graph_of reads MCUNet-format configs (SAME padding only)")
    g = _Builder(spec.resolution)
    stem_act = None if spec.stem_act == "hard_swish" else spec.stem_act
    x = g.conv(g.input, spec.stem_channels, spec.stem_kernel, spec.stem_stride, stem_act)
    if spec.stem_act == "hard_swish":
        x = g.hard_swish(x)
    for block in spec.blocks:
        shortcut = x
        if block.expand:
            x = g.pointwise_or_act(x, block.mid_channels, block.act)
        x = g.conv(x, 0, block.kernel, block.stride,
                   None if block.act == "hard_swish" else block.act, depthwise=True)
        if block.act == "hard_swish":
            x = g.hard_swish(x)
        if block.use_se:
            x = g.squeeze_excite(x)
        x = g.conv(x, block.out_channels, 1, 1, None)
        if block.residual:
            x = g.binary("add", x, shortcut)
    if spec.feature_mix:
        x = g.pointwise_or_act(x, spec.feature_mix, spec.feature_mix_act)
    x = g.softmax(g.fully_connected(g.flatten(g.mean(x)), spec.num_classes))
    graph = Graph(g.tensors, g.ops, [g.input], [x], spec.name)
    return mark_inplace(fold_pads(graph))


def scratch_bytes(op: Op, graph: Graph) -> int:
    """A kernel's own arena bytes (its workspace), by rule: an in-place depthwise
    convolution keeps one input channel's plane aside (kernels/ops.py channel_plane); the
    other kernels of these networks keep nothing beyond registers and the stack."""
    if op.kind == "depthwise_conv2d" and op.attrs.get("inplace"):
        x = graph.t(op.inputs[0])
        return int(x.shape[1]) * int(x.shape[2]) * DTYPE_BYTES[x.dtype]
    if op.kind not in SCRATCH_FREE:
        raise ModelError(f"no scratch rule for {op.kind} (operator {op.index})")
    return 0


SCRATCH_FREE = ("conv2d", "depthwise_conv2d", "add", "mul", "mean", "reshape",
                "fully_connected", "softmax", "hard_swish")


def kind_of(op: Op, graph: Graph) -> str:
    """The instruction table's row of an operator (1x1 convolutions apart)."""
    if op.kind == "conv2d" and tuple(graph.t(op.inputs[1]).shape[1:3]) == (1, 1):
        return "conv2d_1x1"
    return op.kind


@dataclass
class Query:
    """What one (architecture, schedule) costs."""
    arena_bytes: int
    arena_excl_io_bytes: int
    macs: int
    layer_macs: int
    flash_bytes: int
    instructions: int
    schedule: Schedule = field(repr=False)

    @property
    def macs_overhead(self) -> float:
        return self.macs / self.layer_macs if self.layer_macs else 1.0


class Oracle:
    """Costs of one architecture under schedules. Building it reads the config into a graph
    (milliseconds); each query plans one schedule."""

    def __init__(self, config):
        self.graph = graph_of(config)
        graph = self.graph
        self.scratch = {pos: scratch_bytes(op, graph) for pos, op in enumerate(graph.ops)}
        self.model = CostModel(graph, self.scratch)
        self.fp = self.model.fingerprint
        self.weights_bytes = sum(
            t.nbytes for t in graph.tensors.values() if t.is_const) + sum(
            8 * graph.t(op.outputs[0]).shape[-1] for op in graph.ops
            if op.kind in ("conv2d", "depthwise_conv2d"))  # multipliers and shifts
        self._op_instructions = [self._instructions(op) for op in graph.ops]
        self.smallest = None

    def _instructions(self, op: Op) -> float:
        graph = self.graph
        per_mac, per_out = INSTRUCTIONS.get(kind_of(op, graph), (0.0, 10.0))
        return per_mac * op_macs(op, graph) + per_out * math.prod(graph.t(op.outputs[0]).shape)

    @property
    def layer_by_layer(self) -> Schedule:
        return Schedule((), self.fp)

    def query(self, schedule: Schedule | None = None) -> Query:
        schedule = schedule or self.layer_by_layer
        return self.of(self.model.cost(schedule))

    def fit(self, sram: int, objective: str = "arena") -> Query | None:
        """A schedule of a quick menu whose `objective` bytes fit `sram`, the first that
        does: layer by layer; else the first 1 to 4 downsampling levels of the network
        fused, as one block or a block per level, each tiled one output row at a time with
        the rows the next tile shares cached (the search's lowest-memory form, and no MACs
        beyond layer by layer's). None when nothing on the menu fits; `smallest` then holds
        the least memory seen. tvm_patch.choose searches far more schedules (seconds, not
        milliseconds)."""
        key = "arena_bytes" if objective == "arena" else "arena_excl_io_bytes"
        base = self.model.cost(self.layer_by_layer)
        self.smallest = base
        if getattr(base, key) <= sram:
            return self.of(base)
        io = set(self.graph.inputs) | set(self.graph.outputs) if key != "arena_bytes" else ()
        tail = self._tail_live(io)
        ends = self.levels()
        least = None  # (peak live bytes, schedule, stages) of the least memory seen
        for n in range(1, len(ends)):
            if tail.get(ends[n], 0) > sram:
                continue  # the layers after the fused levels alone do not fit
            for spans in [((0, ends[n]),)] + ([tuple(zip(ends[:n], ends[1:n + 1]))]
                                               if n > 1 else []):
                schedule = Schedule(tuple(
                    Block(a, b - 1, (self._rows(b - 1), 1), ("cache", "recompute"))
                    for a, b in spans), self.fp)
                try:
                    stages = self.model.stages(schedule)
                except ModelError:
                    continue
                params, calls = self.model.calls(stages)
                # peak live bytes bound any placement from below: place only what may fit
                bound = peak_live(plan_calls(params, calls, self.graph.outputs, placed=False),
                                  io)
                if least is None or bound < least[0]:
                    least = (bound, schedule, stages)
                if bound <= sram:
                    cost = self.model.cost(schedule, stages)
                    if getattr(cost, key) <= sram:
                        return self.of(cost)
        if least is not None:
            smallest = self.model.cost(least[1], least[2])
            if smallest.arena_bytes < base.arena_bytes:
                self.smallest = smallest
        return None

    def _tail_live(self, io) -> dict:
        """{cut: the most bytes live layer by layer at any step from operator `cut` on}:
        fusing operators before `cut` leaves those steps as they are, so no such schedule
        has an arena below it."""
        params, calls = self.model.calls([])
        plan = plan_calls(params, calls, self.graph.outputs, placed=False)
        live = live_bytes(plan, io)
        for k in range(len(live) - 2, -1, -1):
            live[k] = max(live[k], live[k + 1])
        # graph_of numbers each operator by its position
        return {step.op["index"]: live[k] for k, step in enumerate(plan.steps)}

    def levels(self) -> list:
        """0, then per downsampling layer after the first (at most LEVELS_FUSED), the
        single-tensor cut before it where the tensor handed on is smallest; only cuts
        before which every operator can be fused."""
        graph = self.graph
        sizes = {c: graph.t(t[0]).nbytes for c, t in single_cuts(graph).items() if c}
        out = [0]
        for pos, op in enumerate(graph.ops):
            if op.kind not in BLOCK_KINDS or len(out) > LEVELS_FUSED:
                break
            if pos and op.attrs.get("stride", (1, 1))[0] == 2:
                between = [c for c in sizes if out[-1] < c <= pos]
                if between:
                    out.append(min(between, key=lambda c: (sizes[c], c)))
        return out

    def _rows(self, pos: int) -> int:
        return int(self.graph.t(self.graph.ops[pos].outputs[0]).shape[1])

    def of(self, cost: Cost) -> Query:
        """The Query of a cost the CostModel computed for this graph."""
        per_op = {id(op): n for op, n in zip(self.graph.ops, self._op_instructions)}
        inside = {id(op) for st in cost.stages for op in st.ops}
        layers = sum(n for op, n in per_op.items() if op not in inside)
        blocks = sum(BLOCK_OVERHEAD * sum(per_op[id(op)] for op in st.ops) *
                     (st.macs / st.layer_macs if st.layer_macs else 1.0) for st in cost.stages)
        flash = self.weights_bytes + CODE_BASE + CODE_PER_BLOCK * len(cost.stages)
        return Query(cost.arena_bytes, cost.arena_excl_io_bytes, cost.macs, cost.layer_macs,
                     flash, int(layers + blocks), cost.schedule)


__all__ = ["Oracle", "Query", "graph_of", "scratch_bytes"]
