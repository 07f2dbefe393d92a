"""Bad input gets a clear error naming the problem, never a traceback from inside TVM."""

import subprocess
import sys

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
