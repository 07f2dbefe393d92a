"""Host-driven runs: a session on a built firmware project, on the Cortex-M7 emulator
(started and stopped for you) or on a board behind a serial port.

    with Session("build/vww1-qemu") as s:
        outputs = s.run_model(x)
        s.counters.instructions      # per inference, counted by the emulator
        s.counters.stack_bytes       # stack high-water mark of the run (painting)

The wire protocol is server.c's: framed, length and CRC-32 on every frame; every read has
a deadline, so a device that stops answering raises DeviceError instead of hanging."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..graph import ModelError
from ..runtime.host import check_inputs
from .project import build_firmware, symbol

CHUNK = 1024
STATUS = {1: "frame checksum mismatch", 2: "bad arguments", 3: "unknown command"}


class DeviceError(ModelError):
    """The device (board or emulator) failed, stopped answering or answered garbage."""


@dataclass
class Counters:
    """Of the last run. The emulator counts instructions (not cycles); a board counts core
    cycles with its DWT counter (the emulator does not emulate it: cycles stay None)."""
    instructions: int | None = None
    layer_instructions: list = field(default_factory=list)
    cycles: int | None = None
    layer_cycles: list = field(default_factory=list)
    stack_bytes: int = 0


class Session:
    def __init__(self, project, port: str | None = None, baud: int = 115200,
                 timeout: float = 60.0):
        self.dir = os.fspath(project)
        with open(os.path.join(self.dir, "project.json")) as f:
            self.project = json.load(f)
        self.timeout = timeout
        self.counters = Counters()
        self._emulator = None
        self._fresh = set()  # inputs set since the last run
        if port is None:
            if self.project["target"] != "qemu-m7":
                raise ModelError(f"a {self.project['target']} project runs on its board: "
                                 "give the serial port")
            self._link = _Emulator(self.dir, timeout)
            self._emulator = self._link
        else:
            self._link = _Serial(port, baud)
        try:
            self.info = self._info()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def close(self):
        if self._link is not None:
            self._link.close()
            self._link = None

    def _info(self) -> dict:
        reply = self._call(b"I", b"")
        words = struct.unpack(f"<{len(reply) // 4}I", reply)
        version, model_id, arena, layers, n_in, n_out = words[:6]
        info = {"version": version, "model_id": model_id, "arena_bytes": arena,
                "layers": layers, "input_bytes": list(words[6:6 + n_in]),
                "output_bytes": list(words[6 + n_in:6 + n_in + n_out]),
                "stack_reserved": words[6 + n_in + n_out],
                "cycle_counter": bool(words[7 + n_in + n_out])}
        if model_id != self.project["model_id"]:
            raise DeviceError(f"the device runs another build (model id {model_id:08x}, "
                              f"this project is {self.project['model_id']:08x}): flash it")
        return info

    # --- the model -------------------------------------------------------------------
    def _spec(self, kind: str, index: int) -> dict:
        specs = self.project[kind]
        if not 0 <= index < len(specs):
            raise ModelError(f"the model has {len(specs)} {kind[:-1]}(s): no {kind[:-1]} {index}")
        return specs[index]

    def set_input(self, index: int, value):
        spec = self._spec("inputs", index)
        value = np.ascontiguousarray(value)
        check_inputs([value], [(tuple(spec["shape"]), spec["dtype"])])
        data = value.tobytes()
        for offset in range(0, len(data), CHUNK):
            self._call(b"W", struct.pack("<BI", index, offset) + data[offset:offset + CHUNK])
        self._fresh.add(index)

    def run(self) -> Counters:
        """One inference on the inputs set since the last run (the arena reuses their
        memory for later layers, so each run needs them set again)."""
        stale = [k for k in range(len(self.project["inputs"])) if k not in self._fresh]
        if stale:
            raise ModelError(f"set input(s) {stale} before running: a run reuses the input "
                             "buffers of the arena for later layers")
        self._fresh = set()
        marks = self._emulator.marks_position() if self._emulator else None
        reply = self._call(b"R", b"")
        words = struct.unpack(f"<{len(reply) // 4}I", reply)
        layers = words[0]
        counters = Counters(stack_bytes=words[2 + layers])
        if self.info["cycle_counter"]:
            counters.layer_cycles, counters.cycles = list(words[1:1 + layers]), words[1 + layers]
        if self._emulator:
            counts = self._emulator.marks_since(marks, layers + 1)
            counters.layer_instructions = list(np.diff(counts).tolist())
            counters.instructions = counts[-1] - counts[0]
        self.counters = counters
        return counters

    def get_output(self, index: int) -> np.ndarray:
        spec = self._spec("outputs", index)
        nbytes = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
        data = b"".join(self._call(b"O", struct.pack("<BII", index, off,
                                                      min(CHUNK, nbytes - off)))
                        for off in range(0, nbytes, CHUNK))
        return np.frombuffer(data, spec["dtype"]).reshape(spec["shape"]).copy()

    def run_model(self, *inputs) -> list:
        """Sets every input, runs once, returns every output (counters in .counters)."""
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])
        check_inputs(inputs, [(tuple(s["shape"]), s["dtype"]) for s in self.project["inputs"]])
        for k, x in enumerate(inputs):
            self.set_input(k, x)
        self.run()
        return [self.get_output(k) for k in range(len(self.project["outputs"]))]

    # --- frames ----------------------------------------------------------------------
    def _call(self, command: bytes, payload: bytes) -> bytes:
        if self._link is None:
            raise DeviceError("the session is closed")
        self._link.write(frame(command[0], payload))
        return self._receive(command)

    def _receive(self, command: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        head = self._link.read(7, deadline)
        while head[:2] != b"TP":  # skip noise until a frame starts
            head = head[1:] + self._link.read(1, deadline)
        reply, length = head[2], struct.unpack("<I", head[3:7])[0]
        if length > 16 * 1024 * 1024:
            raise DeviceError(f"the device sent a frame of {length} bytes: garbled link")
        body = self._link.read(length + 4, deadline)
        payload, crc = body[:length], struct.unpack("<I", body[length:])[0]
        if zlib.crc32(head[2:7] + payload) != crc:
            raise DeviceError("a reply from the device failed its checksum")
        status = payload[0] if payload else 0xFF
        if reply == ord("F") | 0x80:
            cfsr, hfsr = struct.unpack("<II", payload[1:9])
            raise DeviceError(f"the device faulted (CFSR 0x{cfsr:08x}, HFSR 0x{hfsr:08x})")
        if reply != command[0] | 0x80:
            raise DeviceError(f"the device answered command {chr(reply & 0x7F)!r} to "
                              f"{command.decode()!r}")
        if status != 0:
            raise DeviceError(f"the device refused {command.decode()!r}: "
                              f"{STATUS.get(status, status)}")
        return payload[1:]


def frame(command: int, payload: bytes) -> bytes:
    head = struct.pack("<BI", command, len(payload))
    return b"TP" + head + payload + struct.pack("<I", zlib.crc32(head + payload))


class _Emulator:
    """qemu-system-arm on the project's ELF, UART0 on a UNIX socket, instructions counted
    by the project's TCG plugin at every tvmp_mark()."""

    def __init__(self, directory: str, timeout: float):
        elf = os.path.join(directory, "build", "firmware.elf")
        if not os.path.exists(elf):
            build_firmware(directory)
        qemu = shutil.which("qemu-system-arm")
        if qemu is None:
            raise ModelError("qemu-system-arm not found: run scripts/setup.sh")
        from .plugin import plugin_library
        plugin = plugin_library()
        mark = symbol(elf, "tvmp_mark")[0]
        self.proc = self.sock = self.log = None
        self.tmp = tempfile.mkdtemp(prefix="tvmp-")
        try:  # whatever interrupts the start (an error, Ctrl-C, SIGTERM) stops qemu
            self._start(qemu, elf, plugin, mark, timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, qemu, elf, plugin, mark, timeout):
        sock_path, self.marks_file = os.path.join(self.tmp, "uart"), os.path.join(self.tmp, "marks")
        self.log = open(os.path.join(self.tmp, "qemu.log"), "w+")
        # Ctrl-C or SIGTERM inside Popen would lose the running child: held until it is ours
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.proc = subprocess.Popen(
                [qemu, "-M", "mps2-an500", "-cpu", "cortex-m7", "-display", "none", "-monitor",
                 "none", "-chardev", f"socket,id=uart,path={sock_path},server=on,wait=on",
                 "-serial", "chardev:uart", "-kernel", elf,
                 "-plugin", f"{plugin},mark=0x{mark:x},out={self.marks_file}"],
                stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(sock_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise DeviceError(f"the emulator did not start: {self._log_tail()}")
                time.sleep(0.02)

    def write(self, data: bytes):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise DeviceError(f"the emulator stopped answering ({e}){self._exit()}") from None

    def read(self, n: int, deadline: float) -> bytes:
        data = b""
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceError(f"the emulator did not answer within the timeout{self._exit()}")
            self.sock.settimeout(min(left, 0.5))
            try:
                chunk = self.sock.recv(n - len(data))
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise DeviceError(f"the emulator stopped answering{self._exit()}") from None
                continue
            except OSError as e:
                raise DeviceError(f"the emulator stopped answering ({e}){self._exit()}") from None
            if not chunk:
                raise DeviceError(f"the emulator stopped answering{self._exit()}")
            data += chunk
        return data

    def marks_position(self) -> int:
        return os.path.getsize(self.marks_file) if os.path.exists(self.marks_file) else 0

    def marks_since(self, position: int, expected: int) -> list:
        with open(self.marks_file) as f:
            f.seek(position)
            counts = [int(line) for line in f.read().split("\n") if line.strip().isdigit()]
        if len(counts) != expected:
            raise DeviceError(f"the instruction counter saw {len(counts)} layer marks, "
                              f"expected {expected}")
        return counts

    def _exit(self) -> str:
        code = self.proc.poll()
        return "" if code is None else f" (emulator exited with code {code})"

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-500:].strip()

    def close(self):
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _die_with_parent():
    """In the emulator's process before exec (Linux): the kernel kills it when its parent
    dies, even by SIGKILL, so no emulator outlives the Python process that started it."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Serial:
    """A board's serial port (pyserial)."""

    def __init__(self, port: str, baud: int):
        try:
            import serial
        except ImportError:
            raise ModelError("talking to a board needs pyserial: pip install pyserial") from None
        try:
            self.port = serial.Serial(port, baud, timeout=0.5)
        except (serial.SerialException, OSError) as e:
            raise DeviceError(f"cannot open {port}: {e}") from None
        self.port.reset_input_buffer()

    def write(self, data: bytes):
        self.port.write(data)

    def read(self, n: int, deadline: float) -> bytes:
        data = b""
        while len(data) < n:
            if time.monotonic() > deadline:
                raise DeviceError(f"the board on {self.port.port} did not answer within the "
                                  "timeout")
            data += self.port.read(n - len(data))
        return data

    def close(self):
        self.port.close()
