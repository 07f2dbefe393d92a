"""Scores of candidate networks (higher is better), by name or "module:function".

  macs     TinyNAS's proxy: the network's multiply-accumulates (more compute, more accuracy
           within a space), from the oracle's graph, no float model.
  naswot   NASWOT (Mellor et al. 2021), training-free: the log-determinant of the kernel of
           ReLU activation codes over a batch of synthetic images, on the project's own float
           model of the candidate (tvm_patch.zoo's, forward only). Networks whose units
           separate the inputs better score higher.
  zen      Zen-score (Lin et al. 2021), training-free: the log of how far the pre-pooling
           features move under a small input perturbation, plus the log batch-norm
           deviations, on the same float model.

A user's evaluator is any function of the MCUNet-format config dict returning a number
(e.g. accuracy after training on their data): `--evaluator mypkg.train:score`.
benchmarks/nas.py prints each built-in proxy's Spearman correlation with the published
ImageNet top-1 of the MCUNet model zoo's configs."""

from __future__ import annotations

import importlib

import numpy as np

from ..graph import ModelError

BATCH = 32          # synthetic images per training-free score
PERTURBATION = 0.01


def macs(config: dict) -> float:
    from .oracle import Oracle
    return float(Oracle(config).model.layer_macs)


def _float_net(config: dict):
    from ..zoo.nets import construct
    return construct(config, seed=0)


def _activations(net, images) -> list:
    """(node, value) of every node of the float net on `images`."""
    from ..zoo.float_net import _evaluate
    values, out = {}, []
    for index, node in enumerate(net.nodes):
        values[index] = images if node.kind == "input" else \
            _evaluate(node, [values[i] for i in node.inputs])
        out.append((node, values[index]))
    return out


def _images(resolution: int, seed: int = 0) -> np.ndarray:
    from ..zoo.float_net import synthetic_images
    return synthetic_images(BATCH, resolution, 3, np.random.default_rng([seed, 3]))


def naswot(config: dict) -> float:
    net = _float_net(config)
    codes = [(value > 0).reshape(BATCH, -1) for node, value in
             _activations(net, _images(net.nodes[0].shape[1]))
             if node.attrs.get("act") in ("relu", "relu6")]
    c = np.concatenate(codes, axis=1).astype(np.float64)
    # K[i, j]: units where images i and j agree (both active or both inactive)
    k = c @ c.T + (1 - c) @ (1 - c).T
    return float(np.linalg.slogdet(k)[1])


def zen(config: dict) -> float:
    net = _float_net(config)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(BATCH,) + net.nodes[0].shape[1:])
    x2 = x + PERTURBATION * rng.normal(size=x.shape)
    last = _feature_index(net)
    a = _activations(net, x)[last][1]
    b = _activations(net, x2)[last][1]
    delta = np.linalg.norm((a - b).reshape(BATCH, -1), axis=1).mean()
    bn = sum(float(np.log(np.sqrt(np.mean(node.attrs["bn_std"] ** 2))))
             for node in net.nodes if "bn_std" in node.attrs)
    return float(np.log(delta + 1e-12) + bn)


def _feature_index(net) -> int:
    """The last feature map before the global pooling."""
    for k in range(len(net.nodes) - 1, -1, -1):
        if net.nodes[k].kind in ("mean", "avgpool") and net.nodes[k].shape[1:3] == (1, 1) \
                and not any(net.nodes[j].kind == "mul" and k in net.nodes[j].inputs
                            for j in range(k + 1, len(net.nodes))):
            return net.nodes[k].inputs[0]
    return len(net.nodes) - 1


BUILT_IN = {"macs": macs, "naswot": naswot, "zen": zen}


def evaluator_of(name: str):
    """The evaluator function for a built-in name or "module:function"."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    module, sep, function = str(name).partition(":")
    if not sep or not module or not function:
        raise ModelError(f"evaluator {name!r}: expected one of {', '.join(BUILT_IN)} or "
                         f"module:function")
    try:
        fn = getattr(importlib.import_module(module), function)
    except ImportError as e:
        raise ModelError(f"evaluator {name!r}: cannot import {module} ({e})") from None
    except AttributeError:
        raise ModelError(f"evaluator {name!r}: {module} has no {function}") from None
    if not callable(fn):
        raise ModelError(f"evaluator {name!r}: {function} is not callable")
    return fn


__all__ = ["BUILT_IN", "evaluator_of", "macs", "naswot", "zen"]
