"""The search: MCUNet / Once-for-All evolution over the architecture space, every candidate
costed by the oracle (its schedule the oracle's best that fits) and scored by an evaluator.

Each generation keeps the `parents` best feasible candidates, and refills the population
with `mutations` mutants and `crossovers` children of random parents; a candidate over the
SRAM, Flash or instruction budget is rejected (never scored). Candidates are evaluated in
a process pool, or on a Ray cluster (the tuner's runners)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from ..graph import ModelError
from .evaluators import evaluator_of
from .space import Arch, Space

OBJECTIVES = ("arena", "arena_excl_io")


def evaluate(task: dict) -> dict:
    """One candidate: its costs under the oracle's best fitting schedule, and (when it fits)
    its score. Runs in a worker; every failure is a result."""
    from .oracle import Oracle
    arch = Arch(**{k: tuple(v) if isinstance(v, list) else v for k, v in task["arch"].items()})
    config = arch.config(task["classes"])
    out = {"arch": task["arch"], "name": arch.name, "feasible": False, "score": None,
           "error": None}
    try:
        oracle = Oracle(config)
        lbl = oracle.query()
        out.update(layer_by_layer_arena_bytes=lbl.arena_bytes, layer_macs=lbl.layer_macs)
        query = oracle.fit(task["sram"], task["objective"])
        best = query or oracle.of(oracle.smallest)
        out.update(arena_bytes=best.arena_bytes, arena_excl_io_bytes=best.arena_excl_io_bytes,
                   macs=best.macs, flash_bytes=best.flash_bytes,
                   instructions=best.instructions, schedule=best.schedule.to_dict(),
                   blocks=len(best.schedule.blocks))
        why = []
        if query is None:
            why.append(f"{task['objective']} over {task['sram']:,} B")
        if task.get("flash") is not None and best.flash_bytes > task["flash"]:
            why.append(f"Flash {best.flash_bytes:,} B over {task['flash']:,} B")
        if task.get("instructions") is not None and best.instructions > task["instructions"]:
            why.append(f"{best.instructions:,} instructions over {task['instructions']:,}")
        out["rejected"] = "; ".join(why) or None
        out["feasible"] = not why
        if out["feasible"]:  # macs: the oracle has them already
            out["score"] = float(lbl.layer_macs) if task["evaluator"] == "macs" else \
                float(evaluator_of(task["evaluator"])(config))
    except Exception as e:  # noqa: BLE001  (a broken evaluator names the candidate)
        out["error"] = f"{arch.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return out


@dataclass
class Candidate:
    arch: Arch
    result: dict

    @property
    def score(self):
        return self.result.get("score")


@dataclass
class SearchResult:
    best: Candidate | None
    smallest: Candidate | None     # the least memory seen (when nothing fits)
    population: list               # the last generation's evaluated candidates
    history: list = field(default_factory=list)   # every evaluated candidate
    best_per_generation: list = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0


def search(sram: int, flash: int | None = None, instructions: int | None = None,
           resolution="auto", generations: int = 20, population: int = 100,
           parents: int = 25, mutations: int = 50, crossovers: int = 50,
           evaluator: str = "macs", seed: int = 0, space: Space | None = None,
           objective: str = "arena", classes: int = 1000, jobs: int = 2,
           ray: str | None = None, progress: bool = False) -> SearchResult:
    """Evolution under the budgets; reproducible for a seed (the pool only changes the order
    results arrive, not what is kept)."""
    if objective not in OBJECTIVES:
        raise ModelError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if population < 2 or parents < 1 or parents > population:
        raise ModelError(f"population {population} and parents {parents}: need "
                         f"1 <= parents <= population, population >= 2")
    evaluator_of(evaluator)  # a bad name fails here, before any worker starts
    space = space or Space()
    if resolution != "auto":
        space = space.with_resolution(int(resolution))
    rng = random.Random(seed)
    from ..tune.measure import runner
    pool = runner(jobs, ray, timeout=600, fn=evaluate) if ray or jobs > 1 else _Inline()
    base = {"sram": sram, "flash": flash, "instructions": instructions,
            "objective": objective, "evaluator": evaluator, "classes": classes}
    history, per_gen, seen = [], [], {}
    started = time.perf_counter()
    bar = _bar(generations, progress)

    def run(archs) -> list:
        todo = [a for a in dict.fromkeys(archs) if a not in seen]
        tasks = [dict(base, arch=a.to_dict()) for a in todo]
        for k, result in pool.run(tasks):
            result = {"feasible": False, "score": None, **result}  # a runner's timeout
            seen[todo[k]] = Candidate(todo[k], result)
            history.append(seen[todo[k]])
        return [seen[a] for a in archs]

    try:
        current = run(_initial(space, rng, population))
        for _ in range(generations):
            ranked = _ranked(current)
            per_gen.append(ranked[0] if ranked else None)
            bar.set_postfix_str(_postfix(ranked[0] if ranked else None))
            bar.update()
            # too few fit: the least memory of the others fill the parents (toward the budget)
            top = (ranked + _smallest_first(current, ranked))[:parents]
            if not top:
                current = run(_initial(space, rng, population))
                continue
            children = [space.mutate(rng.choice(top).arch, rng) for _ in range(mutations)]
            children += [space.crossover(rng.choice(top).arch, rng.choice(top).arch, rng)
                         for _ in range(crossovers)]
            current = top + run(children)
    finally:
        bar.close()
        pool.close()
    ranked = _ranked(history)
    errors = [c for c in history if c.result.get("error")]
    if errors and not ranked:
        raise ModelError(f"every candidate failed; the first: {errors[0].result['error']}")
    sized = [c for c in history if c.result.get("arena_bytes") is not None]
    smallest = min(sized, key=lambda c: c.result["arena_bytes"]) if sized else None
    return SearchResult(ranked[0] if ranked else None, smallest, current, history, per_gen,
                        len(history), time.perf_counter() - started)


class _Inline:
    """One worker: this process (no pool to start)."""

    def run(self, tasks):
        for k, task in enumerate(tasks):
            yield k, evaluate(task)

    def close(self):
        pass


def _initial(space, rng, n) -> list:
    return [space.sample(rng) for _ in range(n)]


def _ranked(candidates) -> list:
    """Feasible candidates, best score first (ties: fewer instructions, then the name)."""
    ok = [c for c in candidates if c.result.get("feasible") and c.score is not None]
    return sorted(ok, key=lambda c: (-c.score, c.result["instructions"], c.arch.name))


def _smallest_first(candidates, ranked) -> list:
    kept = {id(c) for c in ranked}
    rest = [c for c in candidates if id(c) not in kept and c.result.get("arena_bytes")]
    return sorted(rest, key=lambda c: (c.result["arena_bytes"], c.arch.name))


def _postfix(c) -> str:
    if c is None:
        return "nothing fits yet"
    return f"best {c.score:.4g} ({c.result['macs'] / 1e6:.1f}M MACs, {c.result['arena_bytes']:,} B)"


def _bar(total, enabled):
    from tqdm import tqdm
    return tqdm(total=total, unit="gen", disable=not enabled, dynamic_ncols=True)


__all__ = ["Candidate", "SearchResult", "evaluate", "search"]
