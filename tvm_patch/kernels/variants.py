"""Which hand-written C kernel (mcu/firmware/tvmp_nn.c) runs an operator on the
microcontroller in place of the TVM-generated C of its PrimFunc, and with which arguments.
The choice is data: a schedule may name it per layer (Schedule.kernels), else the default
below applies; the emitter records it as a JSON attribute of the operator's PrimFunc
("tvm_patch.c_kernel"), {"name": C function, "args": [...]}, each argument "p<k>" (the
PrimFunc's k-th parameter) or an integer. The host (LLVM) always runs the TIR, so every
firmware run checks the C kernels against it."""

from __future__ import annotations

import json

import numpy as np

from ..graph import Graph, ModelError, Op
from ..quant import INT32_MIN, activation_range, quantize_multipliers

ATTR = "tvm_patch.c_kernel"
# the C depthwise kernel works a channel at a time. Small images are copied into a padded
# plane on the stack (at most DW_PADDED_MAX bytes, 8 of slack included; TVMP_DW_PADDED_MAX in
# tvmp_nn.c) so every window is whole: on the emulated M7 8.9 instructions per MAC at KWS's
# 25x5 (TVM's C 12.4), 9.9 at 5x5 (11.9), but 12.9 at 3x3 (11.1). Larger images run from a
# copy of the channel in the layer's workspace with windows cut by the sides: 8.3-11.7 at
# 12x12 to 48x48 against TVM's 12.2-14.1, but 16-31 at 6x6.
DW_PADDED_MAX = 1024
DEPTHWISE_MIN_SIDE = 8
PADDED_MIN_SIDE = 5
# the C convolution widens each output's window into a column on the stack when it has at
# most COL_MAX taps (kh x kw x cin; TVMP_COL_MAX in tvmp_nn.c): ResNet-8 35.7M -> 25.4M
# instructions, KWS's 10x4 first layer 8.26 -> 2.79 per MAC, its pointwise layers 2.18 ->
# 2.10 (tvmp_conv1x1_s8 keeps wider ones). Wider windows take each window row (kw x cin bytes) as
# one dot product, which pays from CONV_MIN_ROW bytes a row (MLPerf VWW's 9-byte rows 6.06
# -> 4.48 instructions per MAC on TVM's C and this path, KWS's 4-byte rows 8.26 -> 9.43).
COL_MAX = 640
CONV_MIN_ROW = 8


def c_kernel(op: Op, graph: Graph, n_params: int, workspace: int = 0,
             default: bool = True) -> dict | None:
    """The C kernel for `op` (whose PrimFunc has `n_params` parameters: activations, weights,
    bias, multipliers, shifts, output, then its workspace of `workspace` bytes if any), or
    None to keep TVM's C.
    default=True: the default choice, from the layer's shape and quantization alone (where
    the C kernel is known to be faster); False: whenever the C kernel can run the layer."""
    if op.kind not in ("conv2d", "depthwise_conv2d") or n_params < 6 or \
            tuple(op.attrs["dilation"]) != (1, 1):
        return None
    fast = _requantization(op, graph)
    if fast is None:
        return None
    x, wt, y = (graph.t(n) for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
    a = op.attrs
    n, h, w, c = (int(d) for d in x.shape)
    lo, hi = activation_range(a["activation"], y.quant.s, y.quant.zp, y.dtype)
    quant = [-int(x.quant.zp), int(y.quant.zp), int(lo), int(hi), int(fast)]
    tensors = [f"p{k}" for k in range(6)]  # x, w, bias, mult, shift, y
    taps = int(np.prod(wt.shape[1:]))
    if op.kind == "conv2d" and tuple(wt.shape[1:3]) == (1, 1) and \
            tuple(a["stride"]) == (1, 1) and not any(a["padding"]) and wt.shape[3] == c and \
            (taps > COL_MAX or n > 1):
        return {"name": "tvmp_conv1x1_s8", "args": tensors + [
            n * h, w, c, int(wt.shape[0]), w, w] + quant}
    _, oh, ow, _ = (int(d) for d in y.shape)
    if op.kind == "conv2d" and wt.shape[3] == c and n == 1 and \
            (taps <= COL_MAX or wt.shape[2] * c >= CONV_MIN_ROW or not default):
        return {"name": "tvmp_conv_s8", "args": tensors + [
            h, w, c, oh, ow, int(wt.shape[0]), int(wt.shape[1]), int(wt.shape[2]),
            *map(int, a["stride"]), int(a["padding"][0]), int(a["padding"][1]), w, ow] + quant}
    kh, kw = int(wt.shape[1]), int(wt.shape[2])
    padded = ((oh - 1) * a["stride"][0] + kh) * ((ow - 1) * a["stride"][1] + kw) + 8
    if op.kind == "depthwise_conv2d" and a["depth_multiplier"] == 1 and n == 1 and \
            max(kh, kw) <= 7 and (not default or min(oh, ow) >= DEPTHWISE_MIN_SIDE or
                                  (min(oh, ow) >= PADDED_MIN_SIDE and padded <= DW_PADDED_MAX)):
        if not (a.get("inplace") and n_params == 7 and workspace >= h * w):  # the plane
            return None
        return {"name": "tvmp_depthwise_s8", "args": tensors + [
            "p6", h, w, c, oh, ow, int(wt.shape[1]), int(wt.shape[2]), *map(int, a["stride"]),
            int(a["padding"][0]), int(a["padding"][1]), w, ow] + quant}
    return None


def default_knob(op: Op, graph: Graph, kernel) -> str:
    """The kernel a build takes for `op` by default (`kernel`: its lowered Kernel, or None):
    "c" when the default choice gives it a C kernel, else "tvm"."""
    if kernel is None:
        return "tvm"
    return "c" if c_kernel(op, graph, len(kernel.func.params), kernel.scratch_bytes,
                           default=True) is not None else "tvm"


def with_choice(func, op: Op, graph: Graph, workspace: int, choice: str | None):
    """The operator's PrimFunc with its kernel choice as its attribute: "c", "tvm", or None
    for the default; a ModelError when "c" names a layer no C kernel runs."""
    if func.attrs is not None and ATTR in func.attrs:
        func = func.without_attr(ATTR)
    if choice == "tvm":
        return func
    spec = c_kernel(op, graph, len(func.params), workspace, default=choice is None)
    if spec is None and choice is None:
        return func
    if spec is None:
        raise ModelError(f"operator {op.source or op.kind} at index {op.index}: no C kernel runs "
                         f"it (the schedule asks for \"c\"); C kernels run int8 convolutions "
                         f"with dilation 1 and in-place depthwise layers up to 7x7")
    return func.with_attr(ATTR, json.dumps(spec))


def _requantization(op: Op, graph: Graph) -> bool | None:
    """None when the C kernels cannot requantize the layer: they need int8 activations and
    weights, weights symmetric, and no multiplier at INT32_MIN (the one that saturates, which
    the C requantization leaves out). Else whether tvmp_rq_apply_fast (tvmp_nn.h) is exact
    for it: every channel's |accumulator| << (left shift + 1) within int32, from the bound
    |bias| + 255 * sum |weights| (|input + offset| <= 255), and right shifts of at most 30."""
    x, wt, y = (graph.t(n) for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if not (x.dtype == y.dtype == wt.dtype == "int8" and x.quant and y.quant and wt.quant):
        return None
    if np.any(wt.quant.zero_point != 0) or len(op.inputs) < 3:
        return None
    n_out = int(y.shape[3])
    scales = np.float64(x.quant.s) * np.broadcast_to(
        wt.quant.scale.astype(np.float64), (n_out,)) / np.float64(y.quant.s)
    mult, shift = quantize_multipliers(scales)
    if np.any(mult == INT32_MIN):
        return None
    if wt.data is None or not op.inputs[2] or graph.t(op.inputs[2]).data is None:
        return False
    w = np.abs(wt.data.astype(np.int64))
    per_channel = w.sum(axis=(0, 1, 2)) if op.kind == "depthwise_conv2d" else \
        w.reshape(w.shape[0], -1).sum(axis=1)
    bound = np.abs(graph.t(op.inputs[2]).data.astype(np.int64)).ravel() + 255 * per_channel
    left = np.maximum(shift.astype(np.int64), 0)
    if np.any(-shift > 30) or np.any(left > 30):
        return False
    return bool(np.all(bound < np.left_shift(1, 30 - left)))
