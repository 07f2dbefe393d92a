"""The tvm-patch command line, as a user runs it."""

import json
import subprocess
import sys

import numpy as np

from tvm_patch import reference


def tvm_patch_cli(*args):
    res = subprocess.run([sys.executable, "-m", "tvm_patch.cli", *args], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_zoo_profile_run(tmp_path):
    model = tmp_path / "r8.tflite"
    out = tvm_patch_cli("zoo", "resnet8", "-o", str(model))
    assert "wrote" in out and model.stat().st_size > 10_000

    plot = tmp_path / "mem.png"
    prof = json.loads(tvm_patch_cli("profile", str(model), "--json", "--plot", str(plot)))
    for key in ("arena_bytes", "arena_excl_io_bytes", "paper_analytic_bytes", "macs",
                "layers"):
        assert key in prof
    assert prof["macs"] > 12_000_000 and plot.read_bytes()[:4] == b"\x89PNG"

    x = np.random.default_rng(3).integers(-128, 128, (1, 32, 32, 3)).astype(np.int8)
    np.save(tmp_path / "x.npy", x)
    res = json.loads(tvm_patch_cli("run", str(model), "--input", str(tmp_path / "x.npy"),
                                   "--output", str(tmp_path / "y.npy"), "--json"))
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(y, reference.run(model.read_bytes(), [x])[0])
    assert res["outputs"][0]["values"] == y.tolist() and res["arena_bytes"] == prof["arena_bytes"]


def test_zoo_width_and_resolution(tmp_path):
    model = tmp_path / "m.tflite"
    tvm_patch_cli("zoo", "mobilenetv2", "-o", str(model), "--width", "0.35",
                  "--resolution", "96")
    prof = json.loads(tvm_patch_cli("profile", str(model), "--json"))
    assert prof["layers"][0]["inputs"][0] == [1, 96, 96, 3]
    assert prof["layers"][0]["output"] == [1, 48, 48, 16]


def test_patch_options_and_json(tmp_path):
    model = tmp_path / "demo.tflite"
    tvm_patch_cli("zoo", "demo", "-o", str(model))
    prof = json.loads(tvm_patch_cli("profile", str(model), "--patches", "2", "--split", "3",
                                    "--json"))
    assert [b["grid"] for b in prof["blocks"]] == [[2, 2]]
    assert len(prof["blocks"][0]["input_tile_hw"]) == 2 and prof["macs_overhead"] > 1.0
    assert prof["layers"][0]["kind"] == "patch_stage"
    # the schedule --json prints builds the same module again
    (tmp_path / "schedule.json").write_text(json.dumps(prof["schedule"]))
    again = json.loads(tvm_patch_cli("profile", str(model), "--schedule",
                                     str(tmp_path / "schedule.json"), "--json"))
    assert again["schedule"] == prof["schedule"] and again["layers"] == prof["layers"]

    x = np.random.default_rng(5).integers(-128, 128, (1, 80, 80, 3)).astype(np.int8)
    np.save(tmp_path / "x.npy", x)
    res = json.loads(tvm_patch_cli("run", str(model), "--patches", "auto", "--split", "auto",
                                   "--input", str(tmp_path / "x.npy"),
                                   "--output", str(tmp_path / "y.npy"), "--json"))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"),
                                  reference.run(model.read_bytes(), [x])[0])
    assert res["blocks"] and res["schedule"]["blocks"]


def test_patch_errors_are_one_line(tmp_path):
    model = tmp_path / "demo.tflite"
    tvm_patch_cli("zoo", "demo", "-o", str(model))
    res = subprocess.run([sys.executable, "-m", "tvm_patch.cli", "build", str(model),
                          "--split", "999", "--patches", "2"], capture_output=True, text=True)
    assert res.returncode == 2 and "split=999" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "tvm_patch.cli", "build", str(model),
                          "--sram", "1000"], capture_output=True, text=True)
    assert res.returncode == 2 and "cannot fit in 1,000 B" in res.stderr
