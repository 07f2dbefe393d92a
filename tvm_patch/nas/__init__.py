"""Neural architecture search with the compiler as its cost oracle.

    from tvm_patch import nas
    found = nas.run(sram=320 * 1024, flash=1024 * 1024, out="nas-out", progress=True)
    found.paths["tflite"], found.query.arena_bytes

The space (space.py) is MCUNet's MobileNetV2-style one, jointly with the schedule: each
candidate is costed by the oracle (oracle.py: the graph of its config, the build's own
memory planner, no .tflite, milliseconds) under the best schedule its quick menu finds, and
the search (evolution.py) keeps the best-scoring candidates that fit SRAM, Flash and an
optional instruction budget. The winner's schedule is then refined by the full schedule
search (tvm_patch.choose), and written with its config and its int8 .tflite."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

from ..graph import ModelError
from .evaluators import BUILT_IN, evaluator_of
from .evolution import OBJECTIVES, Candidate, SearchResult, evaluate, search
from .oracle import Oracle, Query, graph_of
from .space import Arch, Space


@dataclass
class Found:
    """The search's winner: its config, its refined schedule's costs, the files written."""
    candidate: Candidate
    config: dict
    query: Query
    layer_by_layer: Query
    result: SearchResult
    paths: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        q = self.query
        return {**self.paths, "name": self.config["name"],
                "macs": self.layer_by_layer.layer_macs, "schedule_macs": q.macs,
                "arena_bytes": q.arena_bytes, "arena_excl_io_bytes": q.arena_excl_io_bytes,
                "layer_by_layer_arena_bytes": self.layer_by_layer.arena_bytes,
                "flash_bytes": q.flash_bytes, "predicted_instructions": q.instructions,
                "score": self.candidate.score, "resolution": self.config["resolution"],
                "evaluations": self.result.evaluations,
                "seconds": round(self.result.seconds, 1)}


def refine(config: dict, sram: int, objective: str = "arena") -> tuple:
    """(the fewest-MACs schedule's Query that fits, layer by layer's Query): the oracle's
    quick menu against tvm_patch's full schedule search under the same budget."""
    from ..schedule.search import choose
    oracle = Oracle(config)
    found = [q for q in [oracle.fit(sram, objective)] if q is not None]
    if objective == "arena":
        try:
            found.append(oracle.of(choose(oracle.graph, sram=sram, scratch=oracle.scratch)))
        except ModelError:
            pass
    if not found:
        raise ModelError(f"{config['name']}: no schedule fits {sram:,} B")
    return min(found, key=lambda q: (q.macs, q.arena_bytes)), oracle.query()


def run(sram: int, flash: int | None = None, instructions: int | None = None,
        out: str | None = None, plot: bool = True, **options) -> Found:
    """search(...) under the budgets, then the winner refined and written to `out`: its
    config (config.json), int8 .tflite (model.tflite, the zoo's writer, calibrated) and
    schedule (schedule.json, for --schedule), with a plot of the population."""
    result = search(sram, flash, instructions, **options)
    objective = options.get("objective", "arena")
    if result.best is None:
        raise ModelError(_nothing_fits(result, sram, objective))
    best = result.best
    config = best.arch.config(options.get("classes", 1000))
    query, lbl = refine(config, sram, objective)
    found = Found(best, config, query, lbl, result)
    if out:
        os.makedirs(out, exist_ok=True)
        found.paths = _write(found, out, plot)
    return found


def _nothing_fits(result: SearchResult, sram: int, objective: str) -> str:
    small = result.smallest
    head = (f"no candidate fits {objective} <= {sram:,} B ({result.evaluations} evaluated)")
    if small is None:
        return head
    oracle = Oracle(small.arch.config())
    oracle.fit(sram, objective)  # finds nothing: leaves its least-memory schedule
    cost = oracle.model.cost(oracle.smallest.schedule)
    return f"{head}; the smallest, {small.arch.name}: " + oracle.model.too_big(cost, sram)


def _write(found: Found, out: str, plot: bool) -> dict:
    from .. import zoo
    paths = {"config": os.path.join(out, "config.json"),
             "tflite": os.path.join(out, "model.tflite"),
             "schedule": os.path.join(out, "schedule.json")}
    with open(paths["config"], "w") as f:
        json.dump(found.config, f, indent=1)
    zoo.save(found.config, paths["tflite"])
    with open(paths["schedule"], "w") as f:
        f.write(found.query.schedule.dumps())
    if plot:
        paths["plot"] = plot_population(found, os.path.join(out, "population.png"))
    return paths


def plot_population(found: Found, path: str) -> str:
    """MACs against arena of every evaluated candidate, the feasible ones highlighted, the
    chosen one marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [c.result for c in found.result.history if c.result.get("arena_bytes")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for feasible, style in ((False, dict(color="0.7", s=8, label="over a budget")),
                            (True, dict(color="tab:blue", s=12, label="fits"))):
        pts = [(r["layer_macs"] / 1e6, r["arena_bytes"] / 1024) for r in rows
               if bool(r.get("feasible")) == feasible]
        if pts:
            ax.scatter(*zip(*pts), **style)
    ax.scatter([found.layer_by_layer.layer_macs / 1e6], [found.query.arena_bytes / 1024],
               marker="*", s=200, color="tab:red", label="chosen", zorder=3)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("arena with its schedule (KiB)")
    ax.set_title(f"NAS population: {len(rows)} candidates")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rank_spaces(sram: int, flash: int | None = None, widths=None, resolutions=None,
                samples: int = 200, seed: int = 0, objective: str = "arena",
                classes: int = 1000) -> list:
    """TinyNAS's first step: for each (width, resolution) space, the MACs of the sampled
    networks that fit (oracle only). Rows {width, resolution, fit, macs: sorted list},
    best space first: the largest expected MACs of a sample, one that does not fit counting
    zero (more compute that fits, more accuracy: the paper's CDF argument)."""
    base = Space()
    rows = []
    for w in widths or base.widths:
        for r in resolutions or base.resolutions:
            space = Space(widths=(w,), resolutions=(r,))
            rng = random.Random(f"{seed}-{w}-{r}")
            macs = []
            for _ in range(samples):
                res = evaluate({"arch": space.sample(rng).to_dict(), "sram": sram,
                                "flash": flash, "instructions": None, "objective": objective,
                                "evaluator": "macs", "classes": classes})
                if res["feasible"]:
                    macs.append(res["layer_macs"])
            rows.append({"width": w, "resolution": r, "fit": len(macs) / samples,
                         "macs": sorted(macs)})
    return sorted(rows, key=lambda r: -(sum(r["macs"]) / samples))


__all__ = ["Arch", "BUILT_IN", "Found", "OBJECTIVES", "Oracle", "Query", "Space",
           "SearchResult", "evaluate", "evaluator_of", "graph_of", "rank_spaces", "refine",
           "run", "search"]
