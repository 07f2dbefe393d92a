"""The arena plan: no two live buffers share a byte, and the accounting rules."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import tvm_patch
from tvm_patch import zoo
from tvm_patch.analysis.memory import ALIGN, Buffer, place, plan_memory
from conftest import compiled_model, loaded_model


@st.composite
def buffer_sets(draw):
    n = draw(st.integers(1, 30))
    bufs = []
    for k in range(n):
        start = draw(st.integers(0, 20))
        bufs.append(Buffer(f"b{k}", draw(st.integers(1, 5000)), start,
                           start + draw(st.integers(0, 8)), "activation"))
        # sometimes an in-place output: starts where an earlier buffer ends, anchored to it
        if k and draw(st.booleans()) and not bufs[k - 1].anchor:
            prev = bufs[k - 1]
            bufs[k] = Buffer(f"b{k}", draw(st.integers(1, prev.nbytes)), prev.end,
                             prev.end + draw(st.integers(0, 8)), "activation", anchor=prev.name)
    return bufs


def _check_no_overlap(bufs, arena):
    names = {b.name: b for b in bufs}

    def root(b):
        while b.anchor:
            b = names[b.anchor]
        return b.name

    for i, a in enumerate(bufs):
        assert a.offset % ALIGN == 0 and a.offset + a.nbytes <= arena
        if a.anchor:
            assert a.offset == names[a.anchor].offset
        for b in bufs[i + 1:]:
            if a.overlaps_in_time(b) and root(a) != root(b):
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset


@settings(max_examples=300, deadline=None)
@given(buffer_sets())
def test_placement_never_overlaps_live_buffers(bufs):
    arena = place(bufs)
    _check_no_overlap(bufs, arena)
    peak_live = max(sum(b.nbytes for b in bufs if b.start <= t <= b.end and not (
        b.anchor and b.start == t)) for t in range(40))
    assert arena >= peak_live


def test_placement_reaches_the_live_bound_where_size_order_does_not():
    """Step 3 holds a, b and d (96 B): first-fit by size puts c low, a above it, and d
    then finds no gap below 80 (112 B); other orders reach 96, which no placement beats."""
    bufs = [Buffer("a", 32, 2, 3, "activation"), Buffer("b", 32, 3, 3, "activation"),
            Buffer("c", 48, 0, 2, "activation"), Buffer("d", 32, 3, 3, "activation")]
    assert place(bufs, tries=1) == 112
    assert place(bufs) == 96
    _check_no_overlap(bufs, 96)


def test_plan_of_a_real_model():
    mod, compiled = compiled_model("resnet8", zoo.build("resnet8"))
    plan = compiled.plan
    _check_no_overlap(list(plan.buffers.values()), plan.arena_bytes)
    kinds = {b.kind for b in plan.buffers.values()}
    assert {"input", "output", "activation"} <= kinds
    excl = plan_memory(mod, exclude_io=True)
    assert excl.arena_bytes <= plan.arena_bytes


def test_paper_analytic_mobilenetv2_matches_mcunetv2_table1():
    """MobileNetV2-1.0 at 224x224: 1372 kB per-layer peak under the paper's rule (Table 1)."""
    data = zoo.build("mobilenetv2", width=1.0, resolution=224)
    prof = tvm_patch.profile(loaded_model("mbv2-w1.0-r224", data))
    assert prof.paper_analytic_bytes == 1372 * 1024
    peak = max(prof.layers, key=lambda layer: layer.paper_bytes)
    assert peak.output == [1, 112, 112, 96]  # block 2's expansion conv


def test_profile_fields_and_plot(tmp_path):
    mod, _ = compiled_model("resnet8", zoo.build("resnet8"))
    prof = tvm_patch.profile(mod)
    d = prof.as_dict()
    for key in ("arena_bytes", "arena_excl_io_bytes", "paper_analytic_bytes", "macs", "layers"):
        assert key in d
    assert d["macs"] == sum(layer["macs"] for layer in d["layers"]) > 0
    assert d["arena_bytes"] >= max(layer["live_bytes"] for layer in d["layers"])
    png = prof.plot(str(tmp_path / "mem.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "arena" in prof.table()


def test_macs_of_a_known_layer():
    """ResNet-8's first conv: 32x32x16 outputs, 3x3x3 taps each."""
    mod, _ = compiled_model("resnet8", zoo.build("resnet8"))
    first = tvm_patch.profile(mod).layers[0]
    assert first.kind == "conv2d" and first.macs == 32 * 32 * 16 * 3 * 3 * 3
    assert np.prod(first.output) * 1 == first.output_bytes


def test_explicit_pads_fold_into_convolutions():
    """mcunet-vww1 pads before each stride-2 convolution; folded, the padded copies (the
    largest tensor at 42x42x48) disappear and the arena drops below TFLite Micro's."""
    from conftest import shared_model
    from tvm_patch import reference
    path = shared_model("mcunet-vww1")
    graph = tvm_patch.read(path)
    assert not [op for op in graph.ops if op.kind == "pad"]
    with open(path, "rb") as f:
        data = f.read()
    prof = tvm_patch.profile(loaded_model("mcunet-vww1", data))
    assert prof.arena_bytes < reference.arena(data)["head"]


def test_inplace_depthwise_shares_its_input_buffer():
    """mcunet-vww1's 40x40x48 -> 20x20x48 depthwise writes over its input: the output
    buffer starts at the input's offset, and the arena without io drops by the 19,200-byte
    output it no longer needs beside the input (the kernel copies one 40x40 channel plane
    aside, 1,600 bytes of scratch)."""
    from conftest import shared_model
    path = shared_model("mcunet-vww1")
    graph = tvm_patch.read(path)
    inplace = [op for op in graph.ops if op.attrs.get("inplace")]
    assert inplace and all(op.kind == "depthwise_conv2d" for op in inplace)
    with open(path, "rb") as f:
        mod = loaded_model("mcunet-vww1", f.read())
    plan = plan_memory(mod)
    anchored = [b for b in plan.buffers.values() if b.anchor]
    assert anchored and all(b.offset == plan.buffers[b.anchor].offset for b in anchored)
    big = max(tvm_patch.profile(mod).layers, key=lambda layer: layer.input_bytes
              if layer.kind == "depthwise_conv2d" else 0)
    assert big.input_bytes == 76_800 and big.scratch_bytes == 1_600
    assert big.live_bytes == 76_800 + 1_600
    assert plan_memory(mod, exclude_io=True).arena_bytes == 89_600
