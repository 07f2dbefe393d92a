"""The architecture space: MCUNet / Once-for-All MobileNetV2-style networks on the
ProxylessNAS backbone, written as MCUNet-format JSON configs (what tvm_patch.zoo reads).

    first conv 3x3 s2 (32 x width) -> MB1 3x3 (16 x width)
    -> six stages of inverted bottlenecks (channels x width, first stride):
       (32, 2) (40, 2) (80, 2) (96, 1) (192, 2) (320, 1)
    -> global average pool -> classifier

Each stage has a depth (its base 2 plus 0..2; the last stage 1), each block a kernel size
{3, 5, 7} and an expansion ratio {3, 4, 6}, optionally squeeze-and-excite; the network a
width multiplier and an input resolution. MCUNet's 320 KB ImageNet model is this space at
width 0.5, resolution 176, depths 4 3 3 3 3 1.

MCUNetV2's receptive-field redistribution is `redistribute=True`: the blocks of the
high-resolution stages (the patch stage: output stride 8 or less) take kernel 3 and
expansion 3 or 4 only, the later ones their full choice."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from ..zoo.nets import make_divisible

STAGES = ((32, 2), (40, 2), (80, 2), (96, 1), (192, 2), (320, 1))
STEM, FIRST_BLOCK = 32, 16
BASE_DEPTH, EXTRA_DEPTH = 2, 2
KERNELS, EXPANDS = (3, 5, 7), (3, 4, 6)
WIDTHS = (0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
RESOLUTIONS = tuple(range(48, 225, 16))
PATCH_STAGES = 2  # stages 0 and 1 end at output stride 4 and 8


def max_depth(stage: int) -> int:
    return 1 if stage == len(STAGES) - 1 else BASE_DEPTH + EXTRA_DEPTH


def min_depth(stage: int) -> int:
    return 1 if stage == len(STAGES) - 1 else BASE_DEPTH


@dataclass(frozen=True)
class Arch:
    """One network of the space. `kernels`, `expands` and `se` hold a value for every block
    position (the deepest each stage can be); a stage uses its first `depths[s]`."""
    resolution: int
    width: float
    depths: tuple
    kernels: tuple
    expands: tuple
    se: tuple

    def __post_init__(self):
        positions = sum(max_depth(s) for s in range(len(STAGES)))
        if len(self.depths) != len(STAGES) or any(
                not min_depth(s) <= d <= max_depth(s) for s, d in enumerate(self.depths)):
            raise ValueError(f"depths {self.depths}: one per stage, "
                             f"{[(min_depth(s), max_depth(s)) for s in range(len(STAGES))]}")
        for name in ("kernels", "expands", "se"):
            if len(getattr(self, name)) != positions:
                raise ValueError(f"{name}: one per block position ({positions}), got "
                                 f"{len(getattr(self, name))}")

    def blocks(self):
        """(stage, position in stage, flat index) of the blocks in use."""
        k = 0
        for s in range(len(STAGES)):
            for i in range(max_depth(s)):
                if i < self.depths[s]:
                    yield s, i, k
                k += 1

    def config(self, num_classes: int = 1000, name: str | None = None) -> dict:
        """The MCUNet-format config."""
        def ch(c):
            return make_divisible(c * self.width)
        stem = ch(STEM)
        blocks = [_block(stem, ch(FIRST_BLOCK), 3, 1, 1, False)]
        channels = ch(FIRST_BLOCK)
        for s, i, k in self.blocks():
            out, stride = ch(STAGES[s][0]), STAGES[s][1] if i == 0 else 1
            blocks.append(_block(channels, out, self.kernels[k], stride, self.expands[k],
                                 self.se[k]))
            channels = out
        return {"name": name or self.name, "first_conv": {
                    "name": "ConvLayer", "kernel_size": 3, "stride": 2, "in_channels": 3,
                    "out_channels": stem, "act_func": "relu6"},
                "blocks": blocks, "feature_mix_layer": None,
                "classifier": {"name": "LinearLayer", "in_features": channels,
                               "out_features": num_classes},
                "resolution": self.resolution}

    @property
    def name(self) -> str:
        genes = "".join(f"{self.kernels[k]}{self.expands[k]}{'s' if self.se[k] else ''}"
                        for _, _, k in self.blocks())
        return (f"nas-w{self.width:g}-r{self.resolution}-d"
                f"{''.join(map(str, self.depths))}-{genes}")

    def to_dict(self) -> dict:
        return {"resolution": self.resolution, "width": self.width,
                "depths": list(self.depths), "kernels": list(self.kernels),
                "expands": list(self.expands), "se": list(self.se)}


def _block(cin, cout, kernel, stride, expand, se) -> dict:
    mid = make_divisible(cin * expand) if expand != 1 else cin
    return {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": {
                "name": "MBInvertedConvLayer", "in_channels": cin, "out_channels": cout,
                "kernel_size": kernel, "stride": stride, "expand_ratio": expand,
                "mid_channels": mid, "act_func": "relu6", "use_se": bool(se)},
            "shortcut": {"name": "IdentityLayer"} if stride == 1 and cin == cout else None}


@dataclass(frozen=True)
class Space:
    """Which architectures may be drawn: the widths and resolutions allowed, SE offered,
    MCUNetV2's redistribution."""
    widths: tuple = WIDTHS
    resolutions: tuple = RESOLUTIONS
    se: bool = False
    redistribute: bool = False

    @property
    def positions(self) -> int:
        return sum(max_depth(s) for s in range(len(STAGES)))

    def stage_of(self, k: int) -> int:
        for s in range(len(STAGES)):
            if k < max_depth(s):
                return s
            k -= max_depth(s)
        raise IndexError(k)

    def choices(self, k: int) -> tuple:
        """(kernels, expands) allowed at block position k."""
        if self.redistribute and self.stage_of(k) < PATCH_STAGES:
            return (3,), (3, 4)
        return KERNELS, EXPANDS

    def sample(self, rng: random.Random) -> Arch:
        genes = [self._gene(rng, k) for k in range(self.positions)]
        return Arch(rng.choice(self.resolutions), rng.choice(self.widths),
                    tuple(rng.randint(min_depth(s), max_depth(s)) for s in range(len(STAGES))),
                    *map(tuple, zip(*genes)))

    def _gene(self, rng, k) -> tuple:
        kernels, expands = self.choices(k)
        return rng.choice(kernels), rng.choice(expands), self.se and rng.random() < 0.5

    def mutate(self, arch: Arch, rng: random.Random, p: float = 0.1,
               p_resolution: float = 0.5) -> Arch:
        """Each block's genes, each stage's depth and the width with probability p, the
        resolution with p_resolution (OFA's evolution)."""
        genes = [self._gene(rng, k) if rng.random() < p else
                 (arch.kernels[k], arch.expands[k], arch.se[k]) for k in range(self.positions)]
        depths = tuple(rng.randint(min_depth(s), max_depth(s)) if rng.random() < p else d
                       for s, d in enumerate(arch.depths))
        return Arch(rng.choice(self.resolutions) if rng.random() < p_resolution
                    else arch.resolution,
                    rng.choice(self.widths) if rng.random() < p else arch.width,
                    depths, *map(tuple, zip(*genes)))

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Every gene from either parent."""
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        genes = [pick((a.kernels[k], a.expands[k], a.se[k]),
                      (b.kernels[k], b.expands[k], b.se[k])) for k in range(self.positions)]
        return Arch(pick(a.resolution, b.resolution), pick(a.width, b.width),
                    tuple(pick(x, y) for x, y in zip(a.depths, b.depths)),
                    *map(tuple, zip(*genes)))

    def with_resolution(self, resolution: int) -> "Space":
        return replace(self, resolutions=(resolution,))


__all__ = ["Arch", "Space", "STAGES", "KERNELS", "EXPANDS", "WIDTHS", "RESOLUTIONS"]
