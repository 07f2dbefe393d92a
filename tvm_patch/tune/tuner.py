"""The search: rounds of proposals, measured in parallel, each measurement a record.

Both strategies first measure the default point (layer by layer, default kernels: what a
build without options runs) when it fits; when it does not, the model-guided search starts
from what the compiler builds under the budget (the memory / MAC front's fewest MACs that
fit), the random one from random points. Model-guided (the default), as TVM's tuners do:
the first round adds random points; every later round trains the cost model
on all units measured so far, evolves a population (the best points measured, plus random
ones) by mutation for a few generations scoring each fitting point by its predicted
instructions, and measures the best predicted unmeasured points, except an epsilon share of
random ones (exploration). "random" then measures random fitting points only: the baseline
the model-guided search is benchmarked against."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

from ..graph import ModelError
from ..schedule.records import read_records, record_line
from .measure import TIMEOUT_S, runner as make_runner
from .model import CostModel, UnitFeatures
from .space import Space

STRATEGIES = ("model", "random")
EPSILON = 0.25       # share of each round measured at random
GENERATIONS = 4
POPULATION = 48
MUTATIONS = 8        # children per parent and generation


@dataclass
class Trial:
    number: int
    schedule: object
    instructions: int | None
    arena_bytes: int
    arena_excl_io_bytes: int
    error: str | None
    flash_bytes: int | None = None


@dataclass
class Result:
    trials: list = field(default_factory=list)
    best: Trial | None = None
    curve: list = field(default_factory=list)     # best instructions after each trial
    interrupted: bool = False
    seconds: float = 0.0
    records: str = ""
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        def t(x):
            return None if x is None else {
                "trial": x.number, "instructions": x.instructions, "arena_bytes": x.arena_bytes,
                "arena_excl_io_bytes": x.arena_excl_io_bytes, "flash_bytes": x.flash_bytes,
                "error": x.error, "schedule": x.schedule.to_dict()}
        return {"best": t(self.best), "curve": self.curve, "trials": [t(x) for x in self.trials],
                "interrupted": self.interrupted, "seconds": round(self.seconds, 1),
                "records": self.records, "notes": self.notes}

    def plot(self, path: str, objective: str = "arena") -> None:
        """The measured points, `objective` bytes x instructions, and their Pareto front."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        pts = sorted((getattr(t, f"{objective}_bytes"), t.instructions)
                     for t in self.trials if t.instructions is not None)
        front, low = [], None
        for x, y in pts:
            if low is None or y < low:
                front.append((x, y))
                low = y
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if pts:
            ax.scatter([x / 1024 for x, _ in pts], [y / 1e6 for _, y in pts], s=12,
                       color="0.6", label=f"measured ({len(pts)})")
            ax.step([x / 1024 for x, _ in front], [y / 1e6 for _, y in front], where="post",
                    color="C3", marker="o", label="Pareto front")
        ax.set_xlabel(f"{objective} (KiB)")
        ax.set_ylabel("instructions per inference (millions, emulated Cortex-M7)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


class Tuner:
    def __init__(self, data: bytes, graph, mod, sram=None, flash=None, objective="arena",
                 strategy="model", seed=0, io_type=None):
        if strategy not in STRATEGIES:
            raise ModelError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
        self.data, self.flash, self.strategy, self.io_type = data, flash, strategy, io_type
        self.space = Space(graph, mod, sram, objective)
        funcs = {pos: k.func for pos, k in self.space.kernels.items()}
        self.model = CostModel(UnitFeatures(self.space, funcs), seed)
        self.rng = random.Random(seed)
        self.seen = set()           # points measured or being measured
        self.measured = []          # (instructions, schedule) of points that ran

    def resume(self, records: list) -> None:
        """Counts earlier records of this model as measured (a tuning run continued)."""
        for r in records:
            point = self.space.complete(r.schedule)
            self.seen.add(point)
            if r.ok and self.space.fits(point):
                units = self.space.units(point)
                if len(r.units) == len(units):
                    self.model.update(units, {"instructions": r.instructions, "layers": [
                        {"instructions": r.units[u.key]} for u in units]})
                self.measured.append((r.instructions, point))

    def propose(self, n: int, first: bool) -> list:
        out = []
        if first and self.space.default() not in self.seen and \
                self.space.fits(self.space.default()):
            out.append(self.space.default())
        elif first and self.strategy == "model":  # the compiler's own choice under the budget
            searched = self.space.searched()
            if searched is not None and searched not in self.seen:
                out.append(searched)
        if self.strategy == "model" and not first:
            self.model.train()
            out += self._evolve(n - len(out) - int(n * EPSILON))
        while len(out) < n:
            point = self._random_new(out)
            if point is None:
                break
            out.append(point)
        self.seen.update(out)
        return out

    def _random_new(self, taken: list):
        for _ in range(64):
            point = self.space.sample(self.rng)
            if point is None:   # nothing drawn fits: mutate a point that does
                base = [p for _, p in self.measured] or \
                    [p for p in (self.space.default(),) if self.space.fits(p)]
                point = self.space.mutate(self.rng.choice(base), self.rng) if base else None
            if point is not None and point not in self.seen and point not in taken:
                return point
        return None

    def _evolve(self, n: int) -> list:
        if n <= 0:
            return []
        ranked = sorted(self.measured, key=lambda t: t[0])
        population = [p for _, p in ranked[:POPULATION // 2]]
        while len(population) < POPULATION:
            point = self.space.sample(self.rng, tries=8)
            if point is None:
                break
            population.append(point)
        scored = {}
        for _ in range(GENERATIONS):
            children = []
            for parent in population:
                for _ in range(MUTATIONS):
                    child = self.space.mutate(parent, self.rng)
                    if child is not None:
                        children.append(child)
            for p in population + children:
                if p not in scored:
                    scored[p] = self.model.predict(self.space.units(p))
            population = sorted(set(population + children), key=scored.get)[:POPULATION]
        fresh = sorted((p for p in scored if p not in self.seen), key=scored.get)
        return fresh[:n]

    def run(self, trials: int, records: str, jobs: int = 2, ray: str | None = None,
            timeout: float = TIMEOUT_S, progress: bool = True, batch: int | None = None):
        result = Result(records=records)
        if os.path.exists(records):
            earlier, result.notes = read_records(records, self.space.graph)
            self.resume(earlier)
        os.makedirs(os.path.dirname(os.path.abspath(records)), exist_ok=True)
        batch = batch or max(2, 2 * jobs)
        start = time.perf_counter()
        bar = _bar(trials, progress)
        pool = make_runner(jobs, ray, timeout)
        best = None
        try:
            with open(records, "a") as out:
                while len(result.trials) < trials:
                    points = self.propose(min(batch, trials - len(result.trials)),
                                          first=not result.trials)
                    if not points:
                        break  # the space is exhausted
                    tasks = [{"model": self.data, "io_type": self.io_type, "flash": self.flash,
                              "schedule": p.dumps(), "timeout": timeout} for p in points]
                    for k, measured in pool.run(tasks):
                        trial = self._record(points[k], measured, len(result.trials), out)
                        result.trials.append(trial)
                        if trial.instructions is not None and \
                                (best is None or trial.instructions < best.instructions):
                            best = trial
                        result.curve.append(best.instructions if best else None)
                        bar.update(1)
                        if best is not None:
                            bar.set_postfix_str(f"best {best.instructions:,} instr, "
                                                f"{self.space.bytes_of(self.space.cost(best.schedule)):,} B")
        except KeyboardInterrupt:
            result.interrupted = True
        finally:
            pool.close()
            bar.close()
        result.best, result.seconds = best, time.perf_counter() - start
        return result

    def _record(self, point, measured: dict, number: int, out) -> Trial:
        cost = self.space.cost(point)
        units = self.space.units(point)
        if measured.get("instructions") is not None and len(measured["layers"]) != len(units):
            measured = {**measured, "error": f"{len(measured['layers'])} steps measured, "
                        f"{len(units)} planned", "instructions": None}
        out.write(record_line(point, measured, units, cost, {"trial": number}) + "\n")
        out.flush()
        if measured.get("instructions") is not None and measured.get("error") is None:
            self.model.update(units, measured)
            self.measured.append((measured["instructions"], point))
        else:
            measured = {**measured, "instructions": None}
        return Trial(number, point, measured.get("instructions"), cost.arena_bytes,
                     cost.arena_excl_io_bytes, measured.get("error"), measured.get("flash_bytes"))


def _bar(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="trial", disable=not enabled, dynamic_ncols=True)


def default_records_path(model_path: str) -> str:
    stem = os.path.splitext(os.path.basename(model_path))[0] if model_path else "model"
    return os.path.join("schedules", f"{stem}.jsonl")


__all__ = ["Result", "STRATEGIES", "Trial", "Tuner", "default_records_path"]
