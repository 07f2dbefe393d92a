"""Bad input gets a clear error naming the problem, never a traceback from inside TVM."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tvm_patch
from tvm_patch import zoo
from tvm_patch.zoo import ModelWriter
from conftest import compiled_model


def _unsupported_model() -> bytes:
    w = ModelWriter()
    a = w.tensor("a", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    b = w.tensor("b", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    c = w.tensor("c", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    d = w.tensor("d", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    w.op("ADD", [a, b], [c], {"fused_activation_function": "NONE"})
    w.op("SUB", [c, a], [d])
    return w.finish([a, b], [d])


def test_unsupported_operator_names_type_index_and_tensors():
    with pytest.raises(tvm_patch.UnsupportedOperator) as e:
        tvm_patch.load(_unsupported_model())
    msg = str(e.value)
    assert "SUB" in msg and "index 1" in msg and "inputs" in msg and "outputs" in msg
    assert e.value.index == 1 and e.value.op_name == "SUB"


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file(cut):
    data = zoo.build("resnet8")
    with pytest.raises(tvm_patch.ModelError, match="corrupt or truncated|not a TFLite"):
        tvm_patch.load(data[:int(len(data) * cut)])


def test_garbage_files():
    rng = np.random.default_rng(0)
    with pytest.raises(tvm_patch.ModelError):
        tvm_patch.load(rng.integers(0, 256, 4096).astype(np.uint8).tobytes())
    with pytest.raises(tvm_patch.ModelError):
        tvm_patch.load(b"\x18\x00\x00\x00TFL3" + rng.integers(0, 256, 4096).astype(
            np.uint8).tobytes())


def test_missing_file(tmp_path):
    with pytest.raises(tvm_patch.ModelError, match="no such model file"):
        tvm_patch.load(str(tmp_path / "nope.tflite"))


def test_wrong_input_shape_and_dtype():
    _, compiled = compiled_model("resnet8", zoo.build("resnet8"))
    with pytest.raises(tvm_patch.ModelError, match=r"expected shape \(1, 32, 32, 3\)"):
        compiled.run(np.zeros((1, 32, 32, 1), np.int8))
    with pytest.raises(tvm_patch.ModelError, match="expected dtype int8, got float32"):
        compiled.run(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(tvm_patch.ModelError, match="takes 1 input"):
        compiled.run(np.zeros((1, 32, 32, 3), np.int8), np.zeros(1))


def test_cli_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(zoo.build("resnet8")[:5000])
    unsupported = tmp_path / "sub.tflite"
    unsupported.write_bytes(_unsupported_model())
    for path in (bad, unsupported, tmp_path / "missing.tflite"):
        res = subprocess.run([sys.executable, "-m", "tvm_patch.cli", "profile", str(path)],
                             capture_output=True, text=True)
        assert res.returncode == 2
        assert res.stderr.startswith("tvm-patch: error:") and "Traceback" not in res.stderr


# --- crafted invalid models: each refused with one line naming the operator and field ------

def _conv(stride=(1, 1), dilation=(1, 1), out_shape=(1, 4, 4, 4), in_scale=0.1, out_scale=0.1,
          weight_quant=True, in_shape=(1, 4, 4, 2), in_dtype="int8", writer=None):
    w = writer or ModelWriter()
    quant = {} if in_dtype == "float32" else dict(scale=in_scale, zero_point=0)
    x = w.tensor("x", in_shape, in_dtype, **quant)
    weights = np.random.default_rng(0).integers(-100, 100, (4, 3, 3, in_shape[3]))
    wq = dict(scale=[0.02] * 4, zero_point=[0] * 4) if weight_quant else {}
    wt = w.tensor("w", weights.shape, "int8", data=weights, **wq)
    b = w.tensor("b", (4,), "int32", scale=[0.002] * 4, zero_point=[0] * 4, data=np.arange(4))
    y = w.tensor("y", out_shape, "int8", scale=out_scale, zero_point=-3)
    w.op("CONV_2D", [x, wt, b], [y], dict(
        padding="SAME", stride_h=stride[0], stride_w=stride[1], dilation_h_factor=dilation[0],
        dilation_w_factor=dilation[1], fused_activation_function="RELU"))
    return w.finish([x], [y])


def _depthwise(multiplier=1, channels_out=4, stride=1):
    w = ModelWriter()
    x = w.tensor("x", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    wt = w.tensor("w", (1, 3, 3, channels_out), "int8", scale=[0.02] * channels_out,
                  zero_point=[0] * channels_out, data=np.ones((1, 3, 3, channels_out)),
                  quantized_dimension=3)
    size = 4 if stride == 1 else 2
    y = w.tensor("y", (1, size, size, channels_out), "int8", scale=0.1, zero_point=0)
    w.op("DEPTHWISE_CONV_2D", [x, wt], [y], dict(
        padding="SAME", stride_h=stride, stride_w=stride, depth_multiplier=multiplier))
    return w.finish([x], [y])


def _pool(filter_hw=(2, 2)):
    w = ModelWriter()
    x = w.tensor("x", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    y = w.tensor("y", (1, 2, 2, 2), "int8", scale=0.1, zero_point=0)
    w.op("MAX_POOL_2D", [x], [y], dict(padding="VALID", stride_h=2, stride_w=2,
                                       filter_height=filter_hw[0], filter_width=filter_hw[1]))
    return w.finish([x], [y])


def _softmax(beta):
    w = ModelWriter()
    x = w.tensor("x", (1, 10), "int8", scale=0.1, zero_point=0)
    y = w.tensor("y", (1, 10), "int8", scale=1 / 256, zero_point=-128)
    w.op("SOFTMAX", [x], [y], dict(beta=beta))
    return w.finish([x], [y])


def _reshape(out_shape):
    w = ModelWriter()
    x = w.tensor("x", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    s = w.tensor("s", (len(out_shape),), "int32", data=np.array(out_shape))
    y = w.tensor("y", out_shape, "int8", scale=0.1, zero_point=0)
    w.op("RESHAPE", [x, s], [y])
    return w.finish([x], [y])


def _adds(wiring, inputs=(0,), outputs=(1,), shape=(1, 4, 4, 2)):
    """ADD operators wired as given: [(a, b, out), ...] over tensors 0, 1, 2."""
    w = ModelWriter()
    for name in "abc":
        w.tensor(name, shape, "int8", scale=0.1, zero_point=0)
    for a, b, out in wiring:
        w.op("ADD", [a, b], [out])
    return w.finish(list(inputs), list(outputs))


class _MistaggedWriter(ModelWriter):
    """Writes every operator's options under the Conv2DOptions tag."""

    def _write_options(self, builder, opname, options):
        from tflite.BuiltinOptions import BuiltinOptions
        written = super()._write_options(builder, opname, options)
        return written and (BuiltinOptions.Conv2DOptions, written[1])


class _TwoSubgraphWriter(ModelWriter):
    """Writes the subgraph twice (as a model with a second entry point would have)."""

    def _write_subgraph(self, *args):
        self._subgraphs = [ModelWriter._write_subgraph(self, *args) for _ in range(2)]
        return self._subgraphs[0]

    def _offset_vector(self, builder, offsets):
        if offsets == getattr(self, "_subgraphs", [])[:1]:
            offsets = self._subgraphs
        return ModelWriter._offset_vector(builder, offsets)


INVALID_MODELS = {
    "dilation 0": (lambda: _conv(dilation=(0, 1)), r"operator 0 \(CONV_2D\): dilation \(0, 1\)"),
    "stride 0": (lambda: _conv(stride=(1, 0)), r"operator 0 \(CONV_2D\): stride \(1, 0\)"),
    "output shape": (lambda: _conv(out_shape=(1, 4, 3, 4)),
                     r"CONV_2D\): output shape \[1, 4, 3, 4\], but the operator computes "
                     r"\[1, 4, 4, 4\]"),
    "zero scale": (lambda: _conv(in_scale=0.0), r"t0_x: int8 activation scale \[0.0\]"),
    "infinite scale": (lambda: _conv(out_scale=float("inf")), "scale inf is not finite"),
    "weights unquantized": (lambda: _conv(weight_quant=False),
                            r"CONV_2D\): weights t1_w \(int8\) have no quantization"),
    "negative dimension": (lambda: _conv(in_shape=(1, -4, 4, 2)),
                           r"t0_x: invalid shape \[1, -4, 4, 2\]"),
    "float in int8 op": (lambda: _conv(in_dtype="float32"),
                         r"CONV_2D\): input dtype\(s\) float32 with output dtype int8"),
    "depth multiplier": (lambda: _depthwise(multiplier=3),
                         r"operator 0 \(DEPTHWISE_CONV_2D\): depth_multiplier 3"),
    "negative stride": (lambda: _depthwise(stride=-1), r"DEPTHWISE_CONV_2D\): stride \(-1, -1\)"),
    "pool filter 0": (lambda: _pool((0, 2)), r"operator 0 \(MAX_POOL_2D\): filter \(0, 2\)"),
    "softmax beta 0": (lambda: _softmax(0.0), r"operator 0 \(SOFTMAX\): beta 0.0"),
    "reshape count": (lambda: _reshape((1, 30)), r"RESHAPE\): reshape of \[1, 4, 4, 2\] \(32 "
                                                 r"elements\) to \[1, 30\] \(30 elements\)"),
    "reads itself": (lambda: _adds([(0, 1, 1)]), r"operator 0 \(ADD\): input t1_b is written "
                                                 "by itself"),
    "reads later": (lambda: _adds([(0, 2, 1), (0, 0, 2)]),
                    "operator 0 \\(ADD\\): input t2_c is written by operator 1, which runs later"),
    "two writers": (lambda: _adds([(0, 0, 1), (0, 0, 1)]),
                    r"operator 1 \(ADD\): output t1_b is already written by operator 0"),
    "no operators": (lambda: _adds([], outputs=(0,)), "the model has no operators"),
    "no inputs": (lambda: _adds([(0, 0, 1)], inputs=()), "the model has no inputs"),
    "no outputs": (lambda: _adds([(0, 0, 1)], outputs=()), "the model has no outputs"),
    "tensor index": (lambda: _adds([(0, 0, 1)], outputs=(7,)),
                     "model output refers to tensor 7; the model has 3 tensors"),
    "huge tensor": (lambda: _adds([(0, 0, 1)], shape=(1, 65536, 65536, 2)),
                    "is 8,589,934,592 bytes, over"),
    "options tag": (lambda: _adds_mistagged(),
                    r"operator 0 \(ADD\) has builtin options of type Conv2DOptions, expected "
                    "AddOptions"),
    "second subgraph": (lambda: _conv(writer=_TwoSubgraphWriter()),
                        "the model has 2 subgraphs; only single-subgraph models"),
}


def _adds_mistagged():
    w = _MistaggedWriter()
    a = w.tensor("a", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    b = w.tensor("b", (1, 4, 4, 2), "int8", scale=0.1, zero_point=0)
    w.op("ADD", [a, a], [b], {"fused_activation_function": "RELU"})
    return w.finish([a], [b])


@pytest.mark.parametrize("case", list(INVALID_MODELS))
def test_invalid_model_refused_naming_operator_and_field(case):
    make, message = INVALID_MODELS[case]
    with pytest.raises(tvm_patch.ModelError, match=message) as e:
        tvm_patch.load(make())
    assert "\n" not in str(e.value)


def test_valid_depth_multiplier_still_loads():
    tvm_patch.load(_depthwise(multiplier=2, channels_out=4))


def test_cli_error_is_the_only_line_on_stderr(tmp_path):
    """No TVM warning (BlockBuilder destroyed with remaining blocks) before the error."""
    for name, data in (("self", INVALID_MODELS["reads itself"][0]()),
                       ("nan", _conv(out_scale=float("nan"))), ("sub", _unsupported_model())):
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(data)
        res = subprocess.run([sys.executable, "-m", "tvm_patch.cli", "profile", str(path)],
                             capture_output=True, text=True)
        assert res.returncode == 2
        assert res.stderr.startswith("tvm-patch: error:") and res.stderr.count("\n") == 1, \
            res.stderr


def test_kernel_compile_failure_is_a_model_error():
    from tvm_patch.runtime.host import HostModel
    mod, _ = compiled_model("resnet8", zoo.build("resnet8"))
    with pytest.raises(tvm_patch.ModelError, match="kernel compilation failed"):
        HostModel(mod, target={"kind": "no-such-target"})


# --- the emulator is stopped and its files removed on every exit path ----------------------

def _children(pid: int, name: str) -> list:
    """Pids of the processes called `name` whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            if comm == name[:15] and int(fields[1].split()[1]) == pid:
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"  # zombie: dead
    except OSError:
        return False


def _two_convs() -> bytes:
    w = ModelWriter()
    rng = np.random.default_rng(0)
    x = w.tensor("x", (1, 24, 24, 8), "int8", scale=0.05, zero_point=0)
    prev, channels = x, 8
    for k in range(2):
        wt = w.tensor(f"w{k}", (16, 3, 3, channels), "int8", scale=[0.01] * 16,
                      zero_point=[0] * 16, data=rng.integers(-60, 60, (16, 3, 3, channels)))
        y = w.tensor(f"y{k}", (1, 24, 24, 16), "int8", scale=0.05, zero_point=0)
        w.op("CONV_2D", [prev, wt], [y], dict(padding="SAME", stride_h=1, stride_w=1))
        prev, channels = y, 16
    return w.finish([x], [prev])


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or
                    shutil.which("arm-none-eabi-gcc") is None, reason="no emulator")
@pytest.mark.parametrize("sig, code, line", [(signal.SIGTERM, 143, "tvm-patch: terminated"),
                                             (signal.SIGINT, 130, "tvm-patch: interrupted")])
def test_signal_stops_the_emulator_and_removes_its_files(tmp_path, sig, code, line):
    model, tmp = tmp_path / "m.tflite", tmp_path / "tmp"
    model.write_bytes(_two_convs())
    tmp.mkdir()
    np.save(tmp_path / "x.npy", np.ones((1, 24, 24, 8), np.int8))
    cli = subprocess.Popen(
        [sys.executable, "-m", "tvm_patch.cli", "run", str(model), "--target", "qemu-m7",
         "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, TMPDIR=str(tmp)))
    deadline = time.monotonic() + 120
    while not (qemu := _children(cli.pid, "qemu-system-arm")):
        assert cli.poll() is None and time.monotonic() < deadline, cli.communicate()
        time.sleep(0.005)
    cli.send_signal(sig)
    _, err = cli.communicate(timeout=30)
    assert (cli.returncode, err) == (code, line + "\n")
    assert not _running(qemu[0]), "the emulator outlived the run"
    assert os.listdir(tmp) == []


def test_emulator_that_fails_to_start_reports_its_log(tmp_path, monkeypatch):
    from tvm_patch.mcu import session
    from tvm_patch.mcu.plugin import plugin_library
    plugin_library()  # built (or cached) before `which` finds /bin/false for gcc too
    monkeypatch.setattr(session.shutil, "which", lambda name: "/bin/false")
    monkeypatch.setattr(session, "symbol", lambda elf, name: (0x1000,))
    monkeypatch.setattr(session.tempfile, "tempdir", str(tmp_path))
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "firmware.elf").write_bytes(b"")
    with pytest.raises(session.DeviceError, match="the emulator did not start"):
        session._Emulator(str(tmp_path), timeout=5)
    assert [p for p in os.listdir(tmp_path) if p.startswith("tvmp-")] == []


# --- command line: option values, input files and output paths, checked before compiling ---

@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "m.tflite"
    path.write_bytes(_conv())
    return path


def _cli_error(capsys, *argv) -> str:
    from tvm_patch.cli import main
    with pytest.raises(SystemExit) as e:
        sys.exit(main([str(a) for a in argv]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("tvm-patch: error: ") and \
        err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("option, value", [
    ("--sram", "0"), ("--sram", "-4096"), ("--max-mac-overhead", "nan"),
    ("--max-mac-overhead", "-1"), ("--max-mac-overhead", "0.9"), ("--patches", "-2"),
    ("--split", "0"), ("--timeout", "0"), ("--timeout", "nan"), ("--timeout", "-1")])
def test_bad_option_values_name_the_option(capsys, small_model, tmp_path, option, value):
    err = _cli_error(capsys, "run", small_model, "--input", tmp_path / "x.npy", "--output",
                     tmp_path / "y.npy", option, value)
    assert f"argument {option}: expected" in err and repr(value) in err


@pytest.mark.parametrize("option, value", [("--resolution", "100000"), ("--width", "0")])
def test_zoo_ranges(capsys, tmp_path, option, value):
    assert f"argument {option}" in _cli_error(capsys, "zoo", "demo", "-o", tmp_path / "z.tflite",
                                              option, value)


def _npy_header(shape, descr="|i1") -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


BAD_INPUTS = {
    "empty": (lambda p: p.write_bytes(b""), "not a .npy file"),
    "truncated": (lambda p: p.write_bytes(_npy_header((1, 4, 4, 2)) + b"\0" * 20),
                  r"truncated: 20 bytes of data for shape \(1, 4, 4, 2\) int8, expected 32"),
    "huge header": (lambda p: p.write_bytes(_npy_header((1, 10 ** 9, 10 ** 6, 1000))),
                    r"expected shape \(1, 4, 4, 2\), got \(1, 1000000000, 1000000, 1000\)"),
    "pipe": (lambda p: os.mkfifo(p), "is not a regular file"),
    "directory": (lambda p: p.mkdir(), "is not a regular file"),
    "wrong dtype": (lambda p: np.save(p, np.zeros((1, 4, 4, 2), np.float32)),
                    "expected dtype int8, got float32"),
    "pickle": (lambda p: np.save(p, np.array([{}], dtype=object)), "input|pickle|object"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_file_refused_before_compiling(capsys, monkeypatch, small_model, tmp_path,
                                                 case):
    import tvm_patch.cli
    monkeypatch.setattr(tvm_patch.cli, "_modules", lambda args: pytest.fail("compiled"))
    make, message = BAD_INPUTS[case]
    make(tmp_path / "x.npy")
    err = _cli_error(capsys, "run", small_model, "--input", tmp_path / "x.npy", "--output",
                     tmp_path / "y.npy")
    assert re.search(message, err), err


def test_nan_in_a_float_input_is_refused(capsys, tmp_path):
    w = ModelWriter()
    x = w.tensor("x", (1, 4), "float32")
    y = w.tensor("y", (1, 4), "int8", scale=0.1, zero_point=0)
    w.op("QUANTIZE", [x], [y])
    (tmp_path / "q.tflite").write_bytes(w.finish([x], [y]))
    np.save(tmp_path / "x.npy", np.array([[0, np.nan, 1, np.nan]], np.float32))
    err = _cli_error(capsys, "run", tmp_path / "q.tflite", "--input", tmp_path / "x.npy",
                     "--output", tmp_path / "y.npy")
    assert "2 NaN value(s)" in err


def test_unwritable_output_paths_refused_before_compiling(capsys, monkeypatch, small_model,
                                                         tmp_path):
    import tvm_patch.cli
    monkeypatch.setattr(tvm_patch.cli, "_modules", lambda args: pytest.fail("compiled"))
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 4, 2), np.int8))
    run = ["run", small_model, "--input", tmp_path / "x.npy"]
    missing = tmp_path / "missing" / "y.npy"
    assert "does not exist" in _cli_error(capsys, *run, "--output", missing)
    (tmp_path / "dir.npy").mkdir()
    assert "is a directory" in _cli_error(capsys, *run, "--output", tmp_path / "dir.npy")
    assert "give a .npy" in _cli_error(capsys, *run, "--output", tmp_path / "y")
    assert "existing file, not a directory" in _cli_error(
        capsys, *run, "--output", tmp_path / "y.npy", "--target", "qemu-m7", "-o", small_model)
    assert "existing file, not a directory" in _cli_error(
        capsys, "build", small_model, "--target", "qemu-m7", "-o", small_model)
    assert "does not exist" in _cli_error(capsys, "profile", small_model, "--plot",
                                          missing.with_suffix(".png"))
    assert "give a .png" in _cli_error(capsys, "profile", small_model, "--plot", tmp_path / "p")
    assert "does not exist" in _cli_error(capsys, "zoo", "demo", "-o", missing)
