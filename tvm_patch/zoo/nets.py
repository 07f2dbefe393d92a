"""Architectures of the zoo: MobileNetV2, ProxylessNAS-Mobile, ResNet-8, the demo net, a
three-scale person detector, and any MCUNet-format (ProxylessNAS-style JSON) configuration."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np

from .float_net import Act, FloatNet, synthetic_images

CALIBRATION_IMAGES = 8
IMAGE_QUANT = (2.0 / 255.0, -1)      # int8 image in [-1, 1]
PIXEL_QUANT = (1.0, -128)            # int8 image of raw pixel values 0..255 (MLPerf Tiny ResNet-8)
_ACTIVATIONS = {"relu6": "relu6", "relu": "relu", "h_swish": "hard_swish", None: None}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to a multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(min_value or divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Block:
    """A mobile inverted bottleneck: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project."""
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    mid_channels: int          # equal to in_channels when there is no expansion conv
    expand: bool
    act: str | None = "relu6"
    use_se: bool = False
    residual: bool = False


@dataclass(frozen=True)
class NetSpec:
    name: str
    resolution: int
    stem_channels: int
    blocks: tuple[Block, ...]
    feature_mix: int | None
    num_classes: int
    stem_kernel: int = 3
    stem_stride: int = 2
    stem_act: str | None = "relu6"
    feature_mix_act: str | None = "relu6"
    explicit_pad: bool = False  # stride-2 depthwise convs as PAD + VALID instead of SAME

    def scaled(self, width: float) -> "NetSpec":
        def ch(c: int) -> int:
            return make_divisible(c * width)
        blocks = tuple(dataclasses.replace(
            b, in_channels=ch(b.in_channels), out_channels=ch(b.out_channels),
            mid_channels=ch(b.mid_channels) if b.expand else ch(b.in_channels)) for b in self.blocks)
        return dataclasses.replace(self, stem_channels=ch(self.stem_channels), blocks=blocks,
                                   feature_mix=ch(self.feature_mix) if self.feature_mix else None)


def _stages_to_blocks(stem: int, stages, act="relu6") -> tuple[Block, ...]:
    """stages: (out_channels, first_stride, [(kernel, expand_ratio), ...]) per stage."""
    blocks, channels = [], stem
    for out_channels, first_stride, layers in stages:
        for position, (kernel, ratio) in enumerate(layers):
            stride = first_stride if position == 0 else 1
            mid = int(round(channels * ratio))
            blocks.append(Block(channels, out_channels, kernel, stride, mid if ratio != 1 else channels,
                                ratio != 1, act, False, stride == 1 and channels == out_channels))
            channels = out_channels
    return tuple(blocks)


def mobilenetv2_spec(width: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> NetSpec:
    # (expand ratio, channels, repeats, first stride) of Sandler et al. 2018, Table 2
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    stem = make_divisible(32 * width)
    stages = [(make_divisible(c * width), s, [(3, t)] * n) for t, c, n, s in settings]
    return NetSpec(f"mobilenetv2-w{width:g}-r{resolution}", resolution, stem, _stages_to_blocks(stem, stages),
                   make_divisible(1280 * max(1.0, width)), num_classes)


def proxylessnas_spec(width: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> NetSpec:
    # ProxylessNAS-Mobile (Cai et al. 2019, Fig. 4): (kernel, expand ratio) per kept layer;
    # the searched zero (skip) layers are simply absent.
    stages = [
        (16, 1, [(3, 1)]),
        (32, 2, [(5, 3), (3, 3)]),
        (40, 2, [(7, 3), (3, 3), (5, 3), (5, 3)]),
        (80, 2, [(7, 6), (5, 3), (5, 3), (5, 3)]),
        (96, 1, [(5, 6), (5, 3), (5, 3), (5, 3)]),
        (192, 2, [(7, 6), (7, 6), (7, 3), (7, 3)]),
        (320, 1, [(7, 6)]),
    ]
    stem = make_divisible(32 * width)
    stages = [(make_divisible(c * width), s, layers) for c, s, layers in stages]
    return NetSpec(f"proxylessnas-w{width:g}-r{resolution}", resolution, stem, _stages_to_blocks(stem, stages),
                   make_divisible(1280 * max(1.0, width)), num_classes)


def demo_spec(width: float = 1.0, resolution: int = 80) -> NetSpec:
    """A small MCUNet-style visual-wake-words net: wide early stage at high resolution
    (the memory peak), mixed 3/5/7 kernels, explicit PAD before stride-2 depthwise convs."""
    stages = [
        (8, 1, [(3, 1)]),
        (16, 2, [(5, 6), (3, 4)]),
        (24, 2, [(7, 4), (5, 3)]),
        (40, 2, [(3, 5), (7, 3)]),
        (48, 1, [(5, 4), (3, 4)]),
        (96, 2, [(5, 5)]),
    ]
    stem = make_divisible(16 * width)
    stages = [(make_divisible(c * width), s, layers) for c, s, layers in stages]
    return NetSpec(f"demo-vww-w{width:g}-r{resolution}", resolution, stem, _stages_to_blocks(stem, stages),
                   None, 2, explicit_pad=True)


# -- MCUNet-format JSON configurations ------------------------------------------------------

def spec_from_config(config: dict) -> NetSpec:
    """Parses an MCUNet/ProxylessNAS-format architecture dict, checking it is consistent."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    for key in ("first_conv", "blocks", "classifier"):
        if key not in config:
            raise ValueError(f"config is missing the {key!r} section")
    name = str(config.get("name", "config"))
    first = config["first_conv"]
    stem = _positive_int(first, "out_channels", "first_conv")
    if first.get("in_channels", 3) != 3:
        raise ValueError(f"first_conv.in_channels must be 3 (RGB), got {first.get('in_channels')}")
    stem_act = _activation(first.get("act_func", "relu6"), "first_conv")

    blocks, channels = [], stem
    for i, entry in enumerate(config["blocks"]):
        where = f"blocks[{i}]"
        layer = entry.get("mobile_inverted_conv") if isinstance(entry, dict) else None
        if not isinstance(layer, dict):
            raise ValueError(f"{where} has no 'mobile_inverted_conv' section")
        shortcut = entry.get("shortcut")
        if layer.get("name") == "ZeroLayer":
            if not shortcut:
                raise ValueError(f"{where} is a ZeroLayer without a shortcut: its output would be all zeros")
            continue  # an identity block
        if layer.get("name", "MBInvertedConvLayer") != "MBInvertedConvLayer":
            raise ValueError(f"{where}: unsupported layer {layer.get('name')!r}")
        in_channels = _positive_int(layer, "in_channels", where)
        out_channels = _positive_int(layer, "out_channels", where)
        if in_channels != channels:
            raise ValueError(f"{where}.in_channels is {in_channels} but the previous layer gives {channels}")
        kernel = _positive_int(layer, "kernel_size", where)
        if kernel % 2 == 0:
            raise ValueError(f"{where}.kernel_size must be odd, got {kernel}")
        stride = _positive_int(layer, "stride", where)
        if stride not in (1, 2):
            raise ValueError(f"{where}.stride must be 1 or 2, got {stride}")
        ratio = layer.get("expand_ratio", 6)
        if not isinstance(ratio, (int, float)) or ratio <= 0:
            raise ValueError(f"{where}.expand_ratio must be a positive number, got {ratio!r}")
        mid = layer.get("mid_channels")
        expand = ratio != 1 or (mid is not None and mid != in_channels)
        if mid is None:
            mid = int(round(in_channels * ratio)) if expand else in_channels
        elif not isinstance(mid, int) or mid <= 0:
            raise ValueError(f"{where}.mid_channels must be a positive integer or null, got {mid!r}")
        residual = bool(shortcut)
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError(f"{where} has a shortcut but changes shape "
                             f"(stride {stride}, {in_channels}->{out_channels} channels)")
        act = _activation(layer.get("act_func", "relu6"), where)
        blocks.append(Block(in_channels, out_channels, kernel, stride, mid, expand, act,
                            bool(layer.get("use_se", False)), residual))
        channels = out_channels

    feature_mix, mix_act = None, "relu6"
    if config.get("feature_mix_layer"):
        mix = config["feature_mix_layer"]
        if mix.get("in_channels", channels) != channels:
            raise ValueError(f"feature_mix_layer.in_channels is {mix.get('in_channels')} "
                             f"but the last block gives {channels}")
        feature_mix = channels = _positive_int(mix, "out_channels", "feature_mix_layer")
        mix_act = _activation(mix.get("act_func", "relu6"), "feature_mix_layer")
    classifier = config["classifier"]
    if classifier.get("in_features", channels) != channels:
        raise ValueError(f"classifier.in_features is {classifier.get('in_features')} "
                         f"but the layer before gives {channels}")
    num_classes = _positive_int(classifier, "out_features", "classifier")
    resolution = config.get("resolution", 0)
    return NetSpec(name, int(resolution or 0), stem, tuple(blocks), feature_mix, num_classes,
                   stem_kernel=_positive_int(first, "kernel_size", "first_conv"),
                   stem_stride=_positive_int(first, "stride", "first_conv"),
                   stem_act=stem_act, feature_mix_act=mix_act)


def _positive_int(section: dict, key: str, where: str) -> int:
    value = section.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")
    return value


def _activation(name, where: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"{where}: unsupported act_func {name!r} (supported: relu6, relu, h_swish, null)")
    return _ACTIVATIONS[name]


def load_config(source) -> dict:
    if isinstance(source, dict):
        return source
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        with open(source) as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{source}: not valid JSON ({error})") from None
    raise ValueError(f"unknown model {source!r}: expected one of {STANDARD_NETS}, "
                     "an MCUNet-format JSON file or a config dict")


# -- building float networks ----------------------------------------------------------------

def _pointwise_or_act(net: FloatNet, x: Act, channels: int, act):
    """1x1 conv; a non-fusable activation (hard swish) becomes its own layer."""
    if act == "hard_swish":
        return net.hard_swish(net.conv(x, channels, 1, act=None))
    return net.conv(x, channels, 1, act=act)


def _squeeze_excite(net: FloatNet, x: Act) -> Act:
    reduced = make_divisible(x.channels // 4)
    gate = net.mean(x)
    gate = net.conv(gate, reduced, 1, act="relu")
    gate = net.conv(gate, x.channels, 1, act="hard_sigmoid_gate")
    return net.mul(x, gate)


def _mobile_block(net: FloatNet, x: Act, block: Block, explicit_pad: bool) -> Act:
    shortcut = x
    if block.expand:
        x = _pointwise_or_act(net, x, block.mid_channels, block.act)
    fused_act = None if block.act == "hard_swish" else block.act
    if explicit_pad and block.stride == 2:
        x = net.pad_same(x, block.kernel, block.stride)
        x = net.conv(x, 0, block.kernel, block.stride, fused_act, padding="VALID", depthwise=True)
    else:
        x = net.conv(x, 0, block.kernel, block.stride, fused_act, depthwise=True)
    if block.act == "hard_swish":
        x = net.hard_swish(x)
    if block.use_se:
        x = _squeeze_excite(net, x)
    x = net.conv(x, block.out_channels, 1, act=None)
    return net.add(x, shortcut) if block.residual else x


def build_mobile(spec: NetSpec, seed: int) -> FloatNet:
    rng = np.random.default_rng([seed, 1])
    images = synthetic_images(CALIBRATION_IMAGES, spec.resolution, 3, rng)
    net = FloatNet(spec.name, images, IMAGE_QUANT, seed)
    stem_act = None if spec.stem_act == "hard_swish" else spec.stem_act
    x = net.conv(net.input, spec.stem_channels, spec.stem_kernel, spec.stem_stride, stem_act)
    if spec.stem_act == "hard_swish":
        x = net.hard_swish(x)
    for block in spec.blocks:
        x = _mobile_block(net, x, block, spec.explicit_pad)
    if spec.feature_mix:
        x = _pointwise_or_act(net, x, spec.feature_mix, spec.feature_mix_act)
    x = net.flatten(net.mean(x))
    return net.finish(net.softmax(net.fully_connected(x, spec.num_classes)))


def build_resnet8(width: float, resolution: int, seed: int) -> FloatNet:
    """MLPerf Tiny image-classification ResNet-8 (CIFAR-10): three stacks of two 3x3 convs."""
    rng = np.random.default_rng([seed, 1])
    images = (synthetic_images(CALIBRATION_IMAGES, resolution, 3, rng) + 1.0) * 127.5
    net = FloatNet(f"resnet8-w{width:g}-r{resolution}", images, PIXEL_QUANT, seed)
    x = net.conv(net.input, make_divisible(16 * width), 3, 1, "relu")
    for stack, base_channels in enumerate((16, 32, 64)):
        channels, stride = make_divisible(base_channels * width), 1 if stack == 0 else 2
        y = net.conv(x, channels, 3, stride, "relu")
        y = net.conv(y, channels, 3, 1, None)
        if stride != 1 or x.channels != channels:
            x = net.conv(x, channels, 1, stride, None)
        x = net.add(y, x, act="relu")
    x = net.flatten(net.global_avg_pool(x))
    return net.finish(net.softmax(net.fully_connected(x, 10)))


DETECTOR_HEAD = 18   # per cell: 3 anchors x (box 4 + objectness 1 + person 1), as YOLO


def build_detector(width: float, resolution: int, seed: int) -> FloatNet:
    """A YOLO-style person detector on an MCUNet-style backbone: a 4:5 image (height
    `resolution`, width the nearest multiple of 32) through a stem and inverted-residual
    blocks (depthwise convolutions, residual adds) down to strides 8 and 16, a MAX_POOL_2D
    to stride 32, and an FPN-like neck: each coarser map upsampled by
    RESIZE_NEAREST_NEIGHBOR and ADDed to a 1x1 lateral of the finer one. Three outputs,
    coarse to fine: at 128x160, 4x5x18, 8x10x18, 16x20x18."""
    if resolution % 32:
        raise ValueError(f"the detector's resolution must be a multiple of 32, got {resolution}")
    height, width_px = resolution, max(32, round(resolution * 5 / 4 / 32) * 32)
    rng = np.random.default_rng([seed, 1])
    images = synthetic_images(CALIBRATION_IMAGES, width_px, 3, rng)[:, :height]
    net = FloatNet(f"detector-w{width:g}-r{resolution}", images, IMAGE_QUANT, seed)

    def ch(c):
        return make_divisible(c * width)
    x = net.conv(net.input, ch(16), 3, 2)
    blocks = _stages_to_blocks(ch(16), [(ch(8), 1, [(3, 1)]),
                                        (ch(16), 2, [(3, 3), (3, 3)]),
                                        (ch(24), 2, [(5, 4), (3, 3)])])
    for block in blocks:
        x = _mobile_block(net, x, block, explicit_pad=False)
    c3 = x                                                  # stride 8
    for block in _stages_to_blocks(ch(24), [(ch(40), 2, [(5, 4), (3, 3)])]):
        x = _mobile_block(net, x, block, explicit_pad=False)
    c4 = x                                                  # stride 16
    x = net.max_pool(c4, 2)
    c5 = _mobile_block(net, x, Block(ch(40), ch(64), 3, 1, ch(160), True), False)  # stride 32
    neck = ch(32)
    p5 = net.conv(c5, neck, 1, act="relu6")
    p4 = net.add(net.upsample(p5, 2), net.conv(c4, neck, 1, act=None), act="relu6")
    p3 = net.add(net.upsample(p4, 2), net.conv(c3, neck, 1, act=None), act="relu6")
    heads = []
    for p in (p5, p4, p3):
        y = net.conv(p, 0, 3, depthwise=True)
        heads.append(net.conv(y, DETECTOR_HEAD, 1, act=None))
    return net.finish(*heads)


STANDARD_NETS = ("demo", "detector", "mobilenetv2", "proxylessnas", "resnet8")


def construct(name_or_config, resolution: int | None = None, width: float | None = None,
              seed: int = 0) -> FloatNet:
    """The calibrated float network for a standard name or an MCUNet-format config."""
    if resolution is not None and (not isinstance(resolution, int) or resolution < 8):
        raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
    if width is not None and (not isinstance(width, (int, float)) or width <= 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    if name_or_config == "resnet8":
        return build_resnet8(width or 1.0, resolution or 32, seed)
    if name_or_config == "detector":
        return build_detector(width or 1.0, resolution or 128, seed)
    if name_or_config == "mobilenetv2":
        spec = mobilenetv2_spec(width or 1.0, resolution or 224)
    elif name_or_config == "proxylessnas":
        spec = proxylessnas_spec(width or 1.0, resolution or 224)
    elif name_or_config == "demo":
        spec = demo_spec(width or 1.0, resolution or 80)
    else:
        spec = spec_from_config(load_config(name_or_config))
        if width is not None:
            spec = spec.scaled(width)
        if resolution is not None:
            spec = dataclasses.replace(spec, resolution=resolution)
        if spec.resolution <= 0:
            raise ValueError(f"config {spec.name!r} has no 'resolution': pass resolution=")
    return build_mobile(spec, seed)
