"""Per-layer memory and MAC profile of a compiled Relax module, and the peaks under the
accounting rules:

  arena           bytes of the one static arena the generated code uses: model input and
                  output, every intermediate, kernel scratch (the plan of memory.py)
  arena_excl_io   the same plan made without the model input and output buffers
  paper_analytic  MCUNetV2's rule: per layer input + output activation, depthwise in place
                  (max of in, out), residual shortcut not counted; peak over layers
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from .memory import Plan, plan_memory


@dataclass
class Layer:
    index: int
    kind: str
    source: str
    inputs: list        # shapes
    output: list
    macs: int
    input_bytes: int
    output_bytes: int
    scratch_bytes: int
    live_bytes: int     # arena bytes occupied by the buffers live during this layer
    paper_bytes: int    # this layer under the paper_analytic rule
    fused: int = 1      # operators of the source model this layer runs (a patch stage: many)


@dataclass
class Profile:
    model: str
    layers: list
    arena_bytes: int
    arena_excl_io_bytes: int
    paper_analytic_bytes: int
    macs: int

    def as_dict(self) -> dict:
        return {"model": self.model, "arena_bytes": self.arena_bytes,
                "arena_excl_io_bytes": self.arena_excl_io_bytes,
                "paper_analytic_bytes": self.paper_analytic_bytes, "macs": self.macs,
                "layers": [asdict(layer) for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    def table(self) -> str:
        head = (f"{'#':>3} {'op':<17} {'output':<16} {'MACs':>11} {'in B':>9} {'out B':>9} "
                f"{'live B':>9} {'paper B':>9}")
        rows = [head, "-" * len(head)]
        for layer in self.layers:
            shape = "x".join(str(d) for d in layer.output)
            rows.append(f"{layer.index:>3} {layer.kind:<17} {shape:<16} {layer.macs:>11,} "
                        f"{layer.input_bytes:>9,} {layer.output_bytes:>9,} "
                        f"{layer.live_bytes:>9,} {layer.paper_bytes:>9,}")
        rows.append("-" * len(head))
        rows.append(f"arena {self.arena_bytes:,} B | arena_excl_io {self.arena_excl_io_bytes:,} B"
                    f" | paper_analytic {self.paper_analytic_bytes:,} B "
                    f"({self.paper_analytic_bytes / 1024:.0f} kB) | MACs {self.macs:,}")
        return "\n".join(rows)

    def plot(self, path: str, title: str | None = None, others: dict | None = None) -> str:
        """A PNG of per-layer memory (live arena bytes and the paper's in+out rule), like
        the MCUNetV2 paper's per-block figure; `others` adds profiles to compare."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        series = {"": self} | (others or {})
        fig, ax = plt.subplots(figsize=(11, 4.2))
        for k, (label, prof) in enumerate(series.items()):
            xs, x = [], 0  # a fused patch stage spans the positions of its operators
            for layer in prof.layers:
                xs.append(x)
                x += layer.fused
            tag = f" {label}" if label else ""
            ax.bar(xs, [layer.live_bytes / 1024 for layer in prof.layers], alpha=0.55,
                   width=[layer.fused * 0.8 for layer in prof.layers], align="edge",
                   color=f"C{2 * k}",
                   label=f"live arena bytes{tag} (peak {prof.arena_bytes / 1024:.1f} kB)")
            centers = [x + layer.fused * 0.4 for x, layer in zip(xs, prof.layers)]
            ax.plot(centers, [layer.paper_bytes / 1024 for layer in prof.layers], lw=1.4,
                    color=f"C{2 * k + 1}",
                    label=f"paper rule in+out{tag} (peak {prof.paper_analytic_bytes / 1024:.1f}"
                    " kB)")
        ax.set_xlabel("layer (execution order)")
        ax.set_ylabel("kB (1 kB = 1024 B)")
        ax.set_title(title or f"{self.model}: memory per layer")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def profile(mod) -> Profile:
    plan = plan_memory(mod)
    excl = plan_memory(mod, exclude_io=True)
    layers = [_layer(plan, k, step) for k, step in enumerate(plan.steps)]
    model = str(mod["main"].attrs.get("tvm_patch.model", "model")) if mod["main"].attrs else \
        "model"
    return Profile(model, layers, plan.arena_bytes, excl.arena_bytes,
                   max((layer.paper_bytes for layer in layers), default=0),
                   sum(layer.macs for layer in layers))


def _bytes(plan: Plan, name: str) -> int:
    _, shape, dtype = plan.views[name]
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _occupied(buffers) -> int:
    """Bytes of the arena covered by these buffers (an in-place output overlaps its input)."""
    total, reach = 0, 0
    for lo, hi in sorted((b.offset, b.offset + b.nbytes) for b in buffers):
        total += max(0, hi - max(lo, reach))
        reach = max(reach, hi)
    return total


def _layer(plan: Plan, k: int, step) -> Layer:
    in_sizes = [_bytes(plan, n) for n in step.inputs]
    out = _bytes(plan, step.output)
    kind = step.op.get("kind", step.func)
    fused = 1
    if kind == "patch_stage":  # per tile, computed by the block's plan (schedule/regions.py)
        paper = step.op["attrs"]["paper_bytes"]
        fused = len(step.op["attrs"]["ops"])
    elif kind == "depthwise_conv2d":
        paper = max(in_sizes[0], out)
    elif kind == "add":  # the shortcut operand is not counted
        paper = max(in_sizes) + out if in_sizes else out
    else:
        paper = sum(in_sizes) + out
    live = _occupied(plan.live_at(k))
    scratch = plan.buffers[step.scratch].nbytes if step.scratch else 0
    return Layer(step.op.get("index", k), kind, step.op.get("source", ""),
                 [list(plan.views[n][1]) for n in step.inputs], list(plan.views[step.output][1]),
                 step.macs, sum(in_sizes), out, scratch, live, paper, fused)
