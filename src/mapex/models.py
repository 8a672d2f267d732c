"""Building networks: torchvision classifiers, small-input stems, tiny test nets, class restriction.

Stems. ``"imagenet"`` is torchvision's own network. ``"small"`` adapts it to small inputs
(64×64 Tiny-ImageNet, 32×32 CIFAR) by downsampling less at the start, so the last feature map keeps
a useful size (4×4 or 8×8 instead of 2×2) and the receptive-field mapping stays fine-grained:

- ResNet: ``conv1`` becomes a 3×3 stride-1 conv (freshly initialised, also with ``pretrained``) and
  the stem max-pool is removed (the usual CIFAR ResNet stem): total stride 8 instead of 32.
- VGG-16-BN: the convolutional part is unchanged (five 2×2 pools: 64×64 gives 2×2), but the
  4096-wide classifier (which assumes 7×7 maps and holds ~120M parameters) becomes
  ``AdaptiveAvgPool2d(1)`` + one ``Linear(512, num_classes)``, as in CIFAR VGGs.
- MobileNetV2: the first conv gets stride 1 (same kernel, so pretrained weights still fit):
  total stride 16 instead of 32.
- Tiny nets: the first conv has stride 1 instead of 2.

``pretrained=True`` loads torchvision's default ImageNet weights, from the local torch hub cache
only: nothing is downloaded, so an offline run fails at once with a one-line :class:`UserError`
saying which file to put where. A classifier of another width than 1000 is replaced by a freshly
initialised one.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from mapex.io import UserError

TORCHVISION_ARCHS = ("resnet18", "resnet34", "vgg16_bn", "mobilenet_v2")
TINY_ARCHS = ("tiny-cnn", "tiny-resnet")
ARCHS = TORCHVISION_ARCHS + TINY_ARCHS
STEMS = ("imagenet", "small")
IMAGENET_CLASSES = 1000


def build_model(
    arch: str, num_classes: int, stem: str = "imagenet", pretrained: bool = False, zero_init_residual: bool = False
) -> nn.Module:
    """A classifier ``arch`` with ``num_classes`` outputs and the given stem (see the module doc).

    ``zero_init_residual``: fresh residual blocks start as identities (:func:`zero_residual_branches`)."""
    if arch not in ARCHS:
        raise UserError(f"unknown model arch '{arch}'; expected one of {', '.join(ARCHS)}")
    if stem not in STEMS:
        raise UserError(f"unknown stem '{stem}'; expected one of {', '.join(STEMS)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    small = stem == "small"
    if arch in TINY_ARCHS:
        if pretrained:
            raise UserError(f"there are no pretrained weights for {arch}; set pretrained: false")
        model = _TINY_BUILDERS[arch](num_classes, small)
    else:
        model = _torchvision_model(arch, num_classes, pretrained)
        if small:
            _SMALL_STEMS[arch](model)
    if zero_init_residual and not pretrained:
        zero_residual_branches(model)
    return model


_LAST_NORM = {BasicBlock: "bn2", Bottleneck: "bn3"}  # a ResNet block's BatchNorm before the residual add


def zero_residual_branches(model: nn.Module) -> None:
    """Set the last BatchNorm weight of every ResNet block to 0, so each block starts as its shortcut
    (Goyal et al., 2017; torchvision's ``zero_init_residual``)."""
    for module in model.modules():
        if type(module) in _LAST_NORM:
            nn.init.zeros_(getattr(module, _LAST_NORM[type(module)]).weight)


def _torchvision_model(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    _require_cached(arch, weights.url)
    try:
        model = torchvision.models.get_model(arch, weights=weights)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"pretrained weights for {arch} could not be loaded from the cache ({err})") from err
    if num_classes != IMAGENET_CLASSES:
        _replace_module(model, classifier_name(model), _new_linear(_final_linear(model), num_classes))
    return model


def _require_cached(arch: str, url: str) -> None:
    """Fail before torchvision would try a download: the weights must already be in the hub cache."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    filename = url.rsplit("/", 1)[-1]
    if not (checkpoints / filename).is_file():
        raise UserError(
            f"pretrained weights for {arch} are not available offline: put {filename} (from {url}) "
            f"in {checkpoints} or set pretrained: false"
        )


def _small_resnet_stem(model: nn.Module) -> None:
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def _small_vgg_head(model: nn.Module) -> None:
    num_classes = _final_linear(model).out_features
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(_last_conv(model.features).out_channels, num_classes)


def _small_mobilenet_stem(model: nn.Module) -> None:
    model.features[0][0].stride = (1, 1)


_SMALL_STEMS: dict[str, Callable[[nn.Module], None]] = {
    "resnet18": _small_resnet_stem,
    "resnet34": _small_resnet_stem,
    "vgg16_bn": _small_vgg_head,
    "mobilenet_v2": _small_mobilenet_stem,
}


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _tiny_cnn(num_classes: int, small: bool) -> nn.Module:
    """Three conv-BN-ReLU layers (8, 16, 32 filters), global average pool, linear: a plain chain."""
    return nn.Sequential(
        _conv_bn_relu(3, 8, stride=1 if small else 2),
        _conv_bn_relu(8, 16, stride=2),
        _conv_bn_relu(16, 32, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


class TinyResNet(nn.Module):
    """A conv stem and two torchvision ``BasicBlock``s (8 and 16 filters, the second downsampling).

    Small enough for unit tests, but with the residual adds and the downsample shortcut that couple
    channels in Torch-Pruning's dependency graph and merge receptive fields in the geometry.
    """

    def __init__(self, num_classes: int, small: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=1 if small else 2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(8, 8)
        downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = BasicBlock(8, 16, stride=2, downsample=downsample)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_TINY_BUILDERS: dict[str, Callable[[int, bool], nn.Module]] = {
    "tiny-cnn": _tiny_cnn,
    "tiny-resnet": TinyResNet,
}


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Fresh weights for every layer, drawn from ``seed``, in place: the "scratch" baseline of a pruned
    architecture (Liu et al., ICLR 2019, "Rethinking the value of network pruning")."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def restrict_classes(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of ``model`` whose final Linear keeps only the output rows ``keep``, in that order.

    The copy's logit ``j`` equals the original's logit ``keep[j]`` for every input: a model trained on
    all source classes becomes a task model without retraining. ``model`` itself is not changed.
    """
    linear = _final_linear(model)
    if not keep:
        raise UserError("restrict_classes needs at least one class to keep")
    if len(set(keep)) != len(keep) or not all(0 <= k < linear.out_features for k in keep):
        raise UserError(f"classes to keep must be distinct indices in 0..{linear.out_features - 1}, got {keep}")
    restricted = copy.deepcopy(model)
    rows = torch.tensor(keep, dtype=torch.long)
    new = nn.Linear(linear.in_features, len(keep), bias=linear.bias is not None)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[rows])
    _replace_module(restricted, classifier_name(model), new)
    return restricted


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the final ``nn.Linear`` (the last one registered, as in every model here)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no nn.Linear classifier")
    return names[-1]


def first_conv_name(model: nn.Module) -> str:
    """Qualified name of the first ``nn.Conv2d`` registered (the one that sees the input, in every model here)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise UserError(f"{type(model).__name__} has no nn.Conv2d")


def _final_linear(model: nn.Module) -> nn.Linear:
    return model.get_submodule(classifier_name(model))


def _last_conv(module: nn.Module) -> nn.Conv2d:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]


def _new_linear(old: nn.Linear, out_features: int) -> nn.Linear:
    return nn.Linear(old.in_features, out_features, bias=old.bias is not None)


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every conv of ``model`` with its qualified name, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


InputSize = int | tuple[int, int]


def count_macs_and_params(model: nn.Module, input_size: InputSize) -> tuple[int, int]:
    """(MACs of one forward pass on one image of ``input_size``, parameters): the one count of the project.

    Torch-Pruning's counter (``tp.utils.count_ops_and_params``, run on a deep copy in eval mode)
    counts a conv's ``C_out · C_in / groups · k_h · k_w · H_out · W_out`` multiply-adds plus its
    bias, a linear layer's, and one operation per element for activations and pooling, two for
    BatchNorm. Every table, the pruning report and the latency table use this number. The count
    depends on the structure only, so each structure is counted once per process.
    """
    key = (_structure(model), input_size)
    if key not in _COUNTED:
        import torch_pruning as tp

        macs, params = tp.utils.count_ops_and_params(model, example_input(model, 1, input_size))
        _COUNTED[key] = int(macs), int(params)
    return _COUNTED[key]


_COUNTED: dict[tuple, tuple[int, int]] = {}
"""Counts by model structure: a process counts each architecture once (the sanity check prunes the
same model ~100 times into a few shapes, and each count runs a deep copy through the model)."""


def _structure(model: nn.Module) -> tuple:
    """What the count depends on: every module's name, class and hyperparameters (``extra_repr``: the
    channels, kernel, stride, padding of a conv, ...) and its own parameters' shapes; not the weights."""
    return tuple(
        (name, type(module).__qualname__, module.extra_repr(), tuple(p.shape for p in module.parameters(recurse=False)))
        for name, module in model.named_modules()
    )


def example_input(model: nn.Module, batch: int, input_size: InputSize) -> torch.Tensor:
    """:func:`random_images` with the model's input channels, dtype and device."""
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    parameter = next(model.parameters(), None)
    if parameter is None:
        return random_images(batch, channels, input_size)
    return random_images(batch, channels, input_size, parameter.dtype).to(parameter.device)


def random_images(batch: int, channels: int, input_size: InputSize, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded random images on the CPU (a private generator: the global RNG is left alone)."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for a block (no BatchNorm statistics updated), then the model's previous flag again."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)
