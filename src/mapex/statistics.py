"""Streaming per-filter foreground/background response scores (SPEC: response intensity, filter score).

The feature map ``A_l`` of a conv is "the activation the next layer consumes". We read it from the
model's ``torch.fx`` graph (:func:`activation_taps`): starting at the conv's output, if its only
user is a BatchNorm we move to the BN's output; then, if that output's only user is an activation
(ReLU, ReLU6, SiLU, Hardswish, GELU, LeakyReLU; module or functional) we apply that activation.
Anything else stops the walk: e.g. in a ResNet block, ``bn2``'s output goes to the residual add,
so the consumed activation of ``conv2`` is the BN output itself (no ReLU).

The activation is applied *functionally* in a forward hook on the conv or BN module, never by
hooking the activation module, because torchvision's ResNet calls one in-place ``relu`` module
several times per block.

The ``nonneg`` tap (SPEC, this project's variant) differs only where that walk stops at a residual
add: the conv is then scored on ``relu`` of the add's output (of the activation applied to it,
if one follows), read at the output of the submodule that returns it (a ResNet block, a
MobileNetV2 inverted residual). Every other conv gets ``relu`` of its consumed activation
(which changes nothing after a ReLU or ReLU6).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from tqdm.auto import tqdm

from mapex.geometry import (
    METHODS,
    BoxBatch,
    EffectiveField,
    LayerGeometry,
    batch_foreground_weights,
    effective_foreground_weights,
    field_box_map,
    node_geometries,
    receptive_fields,
    trace_model,
)
from mapex.io import UserError, autocast
from mapex.models import device_of, eval_mode

SCORES = ("diff", "ratio", "fg", "contrast")
TAPS = ("consumed", "nonneg")
FIELDS = ("theoretical", "effective")
RATIO_EPSILON = 1e-6
CONTRAST_EPSILON = 1e-6
EFFECTIVE_FIELD_IMAGES = 16  # the effective fields are measured on at most this many images of the first batch
CHUNK_BYTES = 2 << 20  # activations are weighted a few images at a time, about this many bytes

Activation = Callable[[Tensor], Tensor]
TapCallback = Callable[[str, Tensor], None]
RawTapCallback = Callable[[str, Tensor, "Tap"], None]

_NORM_MODULES = (nn.BatchNorm2d, nn.SyncBatchNorm)
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU)
_ACTIVATION_FUNCTIONS = {F.relu, F.relu6, F.silu, F.hardswish, F.gelu, F.leaky_relu, torch.relu}
_ACTIVATION_METHODS = {"relu": F.relu, "relu_": F.relu}
_NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6)
_NONNEGATIVE_FUNCTIONS = {F.relu, F.relu6, torch.relu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}


@dataclass(frozen=True)
class Tap:
    """Where to read a conv's consumed activation: the output of ``module``, then ``activation``."""

    module: str
    activation: Activation | None = None

    def read(self, output: Tensor) -> Tensor:
        return output if self.activation is None else self.activation(output)


# --------------------------------------------------------------------------- activation taps


def activation_taps(model: nn.Module, graph: fx.Graph | None = None, tap: str = "consumed") -> dict[str, Tap]:
    """For every ``nn.Conv2d`` (by qualified name), the :class:`Tap` of its feature map ``A_l``.

    ``tap``: ``consumed`` (the activation the next layer consumes) or ``nonneg`` (see the module
    docstring). ``graph``: the model's :func:`mapex.geometry.trace_model` graph, where the caller
    already has it.
    """
    return {name: found for name, (found, _node) in _tap_nodes(model, graph or trace_model(model), tap).items()}


def _tap_nodes(model: nn.Module, graph: fx.Graph, tap: str) -> dict[str, tuple[Tap, fx.Node]]:
    """Per conv, its :class:`Tap` and the graph node of the tapped tensor (before ``tap.activation``)."""
    if tap not in TAPS:
        raise UserError(f"unknown tap '{tap}'; expected one of {', '.join(TAPS)}")
    find = _consumed_tap if tap == "consumed" else _nonnegative_tap
    modules = dict(model.named_modules())
    taps: dict[str, tuple[Tap, fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d) and node.target not in taps:
            taps[node.target] = find(node, modules)
    return taps


def _output_and_consumer(conv_node: fx.Node, modules: dict[str, nn.Module]) -> tuple[fx.Node, fx.Node | None]:
    """The conv's node, or that of the BatchNorm that is its only user; and that node's only user."""
    follower = _only_user(conv_node)
    if follower is not None and follower.op == "call_module" and isinstance(modules[follower.target], _NORM_MODULES):
        return follower, _only_user(follower)
    return conv_node, follower


def _consumed_tap(conv_node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Tap, fx.Node]:
    node, follower = _output_and_consumer(conv_node, modules)
    activation = None if follower is None else _activation_of(follower, modules)
    return Tap(module=node.target, activation=activation), node


def _nonnegative_tap(conv_node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Tap, fx.Node]:
    node, follower = _output_and_consumer(conv_node, modules)
    if follower is not None and _is_residual_add(follower):
        after_add = _only_user(follower)
        end = after_add if after_add is not None and _activation_of(after_add, modules) is not None else follower
        return Tap(module=_returning_module(end, conv_node.target), activation=F.relu), end
    tap, node = _consumed_tap(conv_node, modules)
    if _is_nonnegative(tap.activation):
        return tap, node
    return Tap(tap.module, F.relu if tap.activation is None else _then_relu(tap.activation)), node


def _is_residual_add(node: fx.Node) -> bool:
    """An addition of two tensors (``out += identity`` traces to ``operator.add``)."""
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in _ADD_METHODS
    )
    return is_add and sum(isinstance(arg, fx.Node) for arg in node.args) == 2


def _is_nonnegative(activation: Activation | None) -> bool:
    function = activation.func if isinstance(activation, functools.partial) else activation
    return isinstance(function, _NONNEGATIVE_MODULES) or function in _NONNEGATIVE_FUNCTIONS


def _then_relu(activation: Activation) -> Activation:
    return lambda tensor: F.relu(activation(tensor))


def _returning_module(node: fx.Node, conv_name: str) -> str:
    """The innermost submodule whose forward returns ``node``'s value: ``node`` is computed inside
    it and every user of ``node`` is outside it (``torch.fx`` records each node's module stack)."""
    stack = list((node.meta.get("nn_module_stack") or {}).items())
    for scope, (name, _module_type) in reversed(stack):
        if node.op == "call_module" and name == node.target:
            continue  # the node's own module (e.g. the ReLU after the add), which may be called several times
        if all(scope not in (user.meta.get("nn_module_stack") or {}) for user in node.users):
            return name
        break
    raise UserError(
        f"tap 'nonneg': the residual add after conv '{conv_name}' is not the output of a "
        "submodule, so it cannot be read with a forward hook"
    )


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> Activation | None:
    """An out-of-place callable equal to the activation ``node`` applies, or ``None`` if it is none."""
    if node.op == "call_module" and isinstance(modules[node.target], _ACTIVATION_MODULES):
        return _out_of_place_copy(modules[node.target])
    if node.op == "call_method":
        return _ACTIVATION_METHODS.get(node.target)
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
        return _bind_options(node.target, node.args[1:], node.kwargs)
    return None


def _out_of_place_copy(module: nn.Module) -> nn.Module:
    """A shallow copy with ``inplace=False``: the hook must not overwrite the tensor the model uses next."""
    activation = copy.copy(module)
    if hasattr(activation, "inplace"):
        activation.inplace = False
    return activation


def _bind_options(function: Callable, args: Sequence[Any], kwargs: dict[str, Any]) -> Activation:
    """``function`` with the call's options (e.g. ``negative_slope``) bound and ``inplace`` dropped."""
    try:
        parameters = list(inspect.signature(function).parameters)
        options = {**dict(zip(parameters[1:], args)), **kwargs}
    except ValueError:  # builtins (torch.relu, F.gelu) have no signature; their options are keywords
        options = dict(kwargs)
    options.pop("inplace", None)
    return functools.partial(function, **options)


@contextlib.contextmanager
def tap_activations(
    model: nn.Module, callback: TapCallback, taps: dict[str, Tap] | None = None
) -> Iterator[dict[str, Tap]]:
    """Within the block, every forward pass calls ``callback(conv_name, activation)`` per conv.

    ``taps`` defaults to :func:`activation_taps`. The activation tensor may be overwritten in place
    by the model right after the callback returns (ResNet's ``out += identity``), so the callback
    must use it at once and not keep it. Hooks are removed on exit.
    """
    taps = activation_taps(model) if taps is None else taps
    with tap_outputs(model, taps, lambda name, output, tap: callback(name, tap.read(output))):
        yield taps


@contextlib.contextmanager
def kept_outputs(model: nn.Module, module_of: dict[str, str]) -> Iterator[dict[str, Tensor]]:
    """Collect, per conv name, the output of module ``module_of[conv_name]`` during a forward pass.

    The model continues with a copy of each collected output, so its later in-place operations
    (ResNet's ``relu(inplace=True)`` and ``out += identity``) leave the kept tensor, and the
    gradient with respect to it, as they were.
    """
    modules = dict(model.named_modules())
    outputs: dict[str, Tensor] = {}

    def keep(conv_name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            outputs[conv_name] = output
            return output.clone()

        return hook

    handles = [modules[module].register_forward_hook(keep(conv)) for conv, module in module_of.items()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def tap_outputs(model: nn.Module, taps: dict[str, Tap], callback: RawTapCallback) -> Iterator[None]:
    """Like :func:`tap_activations`, but ``callback(conv_name, output, tap)`` gets the tapped module's
    raw output and applies ``tap.read`` itself (e.g. chunk by chunk, to save memory traffic)."""
    modules = dict(model.named_modules())
    handles = [modules[tap.module].register_forward_hook(_hook(name, tap, callback)) for name, tap in taps.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hook(conv_name: str, tap: Tap, callback: RawTapCallback) -> Callable:
    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        callback(conv_name, output, tap)

    return hook


# --------------------------------------------------------------------------- response accumulation


@dataclass(frozen=True)
class _UnitWeights:
    """One layer's weights for one batch, normalised so that a product with ``A`` gives means.

    ``normalised [B, 2, h*w]``: row 0 is ``w / Σ w``, row 1 is ``(1-w) / Σ (1-w)`` (all zeros for
    an image whose sum is 0); ``image_count [2]``: how many images have an ``F_i`` / a ``B_i``.
    """

    normalised: Tensor
    image_count: Tensor

    @classmethod
    def from_foreground(cls, foreground: Tensor, count_dtype: torch.dtype) -> _UnitWeights:
        """``foreground [B, h*w]`` in ``[0, 1]``. A sum of non-negative weights is 0 only if all are."""
        weights = torch.stack([foreground, 1 - foreground], dim=1)
        totals = weights.sum(dim=2, keepdim=True)
        normalised = weights / totals.clamp(min=torch.finfo(weights.dtype).tiny)
        return cls(normalised, (totals[:, :, 0] > 0).sum(dim=0).to(count_dtype))


class _FilterSums:
    """Running sums for one conv; row 0 is the foreground, row 1 the background.

    ``response_sum [2, C]``: Σ over images of ``F_i`` / ``B_i`` per filter;
    ``image_count [2]``: how many images have an ``F_i`` / a ``B_i``.
    """

    def __init__(self, channels: int, device: torch.device, dtype: torch.dtype):
        self.response_sum = torch.zeros(2, channels, device=device, dtype=dtype)
        self.image_count = torch.zeros(2, device=device, dtype=dtype)

    def add(self, image_means: Tensor, image_count: Tensor) -> None:
        """Add a batch's ``image_means [B, 2, C]`` (rows of images without ``F_i`` / ``B_i`` are 0)."""
        self.response_sum += image_means.sum(dim=0, dtype=self.response_sum.dtype)
        self.image_count += image_count

    def means(self) -> tuple[Tensor, Tensor]:
        """``F̄`` and ``B̄`` per filter; 0 where no image has one (SPEC)."""
        means = self.response_sum / self.image_count.clamp(min=1)[:, None]
        return means[0], means[1]


class ResponseAccumulator:
    """Streams feature maps into per-filter ``F̄`` / ``B̄`` sums; memory does not grow with the images.

    Per batch: call :meth:`start_batch` with the batch's boxes, run the model with :meth:`add` as
    the :func:`tap_activations` callback (or :meth:`add_tapped` as the :func:`tap_outputs` one),
    and read :meth:`scores` at the end. The weight maps are computed once per (geometry, feature
    size) and batch, and shared by the convs that have them. Weights and the sums over a feature
    map's units are float32 (``bmm``); the running sums over images are float64 (float32 on MPS,
    which has no float64).

    ``fields``: per conv, its :class:`EffectiveField`; given, ``map-ex`` weights are computed under
    it (SPEC, field ``effective``) instead of under the theoretical receptive field.
    """

    def __init__(
        self,
        geometries: dict[str, LayerGeometry],
        method: str = "map-ex",
        device: torch.device | str = "cpu",
        fields: dict[str, EffectiveField] | None = None,
    ):
        self.geometries = geometries
        self.method = method
        self.fields = fields
        self.device = torch.device(device)
        self.dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._sums: dict[str, _FilterSums] = {}
        self._boxes: BoxBatch | None = None
        self._weights: dict[tuple[LayerGeometry | str, int, int], _UnitWeights] = {}

    def start_batch(self, boxes: Sequence[Tensor], image_hw: tuple[int, int]) -> None:
        """Set the boxes (one ``[k, 4]`` tensor per image, input pixels, half-open) of the next batch."""
        self._boxes = BoxBatch(boxes, image_hw, self.device)
        self._weights = {}

    def add(self, conv_name: str, output: Tensor, activation: Activation | None = None) -> None:
        """Add one conv's feature maps ``[B, C, h, w]`` for the current batch.

        ``activation``, if given, is applied here to ``output`` (see :func:`tap_outputs`).
        """
        weights = self._unit_weights(conv_name, tuple(output.shape[2:]))
        if conv_name not in self._sums:
            self._sums[conv_name] = _FilterSums(output.shape[1], self.device, self.dtype)
        self._sums[conv_name].add(_image_means(output, activation, weights.normalised), weights.image_count)

    def add_tapped(self, conv_name: str, output: Tensor, tap: Tap) -> None:
        """:func:`tap_outputs` callback."""
        self.add(conv_name, output, tap.activation)

    def _unit_weights(self, conv_name: str, feature_hw: tuple[int, int]) -> _UnitWeights:
        if self._boxes is None:
            raise RuntimeError("ResponseAccumulator.add called before start_batch")
        key = (self.geometries[conv_name] if self.fields is None else conv_name, *feature_hw)
        if key not in self._weights:
            foreground = self._foreground(conv_name, feature_hw, self._boxes)
            self._weights[key] = _UnitWeights.from_foreground(foreground.flatten(1), self.dtype)
        return self._weights[key]

    def _foreground(self, conv_name: str, feature_hw: tuple[int, int], boxes: BoxBatch) -> Tensor:
        if self.fields is None:
            return batch_foreground_weights(self.geometries[conv_name], feature_hw, boxes, self.method)
        return effective_foreground_weights(self.fields[conv_name], feature_hw, boxes)

    def scores(self, score: str = "diff") -> dict[str, Tensor]:
        """Per conv name, the score of every output filter as a 1-D float32 CPU tensor."""
        return {name: _combine(sums, score).float().cpu() for name, sums in self._sums.items()}


def _image_means(output: Tensor, activation: Activation | None, normalised: Tensor) -> Tensor:
    """``[B, 2, C]``: every image's and filter's ``F_i`` and ``B_i``, as ``normalised [B, 2, h*w]`` @ ``A``.

    An image without ``F_i`` (or ``B_i``) has a zero row there, so its mean comes out 0. Done
    in chunks of about :data:`CHUNK_BYTES` of images: the activated chunk is still in cache when
    the ``bmm`` reads it, and no whole-batch activation is allocated.
    """
    batch, channels = output.shape[:2]
    per_chunk = max(1, CHUNK_BYTES // max(1, output[0].nbytes))
    means = []
    for first in range(0, batch, per_chunk):
        chunk = output[first : first + per_chunk]
        chunk = chunk if activation is None else activation(chunk)
        units = chunk.reshape(len(chunk), channels, -1).to(normalised.dtype).transpose(1, 2)
        means.append(torch.bmm(normalised[first : first + per_chunk], units))
    return torch.cat(means)


def _combine(sums: _FilterSums, score: str) -> Tensor:
    foreground, background = sums.means()
    if score == "diff":
        return foreground - background
    if score == "ratio":
        return foreground / (background + RATIO_EPSILON)
    if score == "fg":
        return foreground
    if score == "contrast":
        return (foreground - background) / (foreground + background + CONTRAST_EPSILON)
    raise UserError(f"unknown score '{score}'; expected one of {', '.join(SCORES)}")


# --------------------------------------------------------------------------- filter scores


def filter_scores(
    model: nn.Module,
    batches: Iterable[Sequence[Any]],
    method: str = "map-ex",
    score: str = "diff",
    input_size: tuple[int, int] | None = None,
    amp: bool = False,
    progress: bool = True,
    tap: str = "consumed",
    field: str = "theoretical",
) -> dict[str, Tensor]:
    """Map-EX filter scores: per conv name, one float32 CPU score per output filter (SPEC).

    ``batches`` yields ``(images, boxes)`` or ``(images, labels, boxes)``; ``boxes`` is a list with
    one ``[k, 4]`` tensor per image (``x0, y0, x1, y1`` in input pixels, half-open). One pass in
    eval mode and inference mode on the model's device; the model's train/eval mode is restored
    afterwards. Each batch's own ``H, W`` bounds the receptive-field clipping; ``input_size``
    (default: the first batch's) is passed to :func:`receptive_fields`. ``amp`` runs the forward
    under bfloat16 autocast where it is native (:func:`mapex.io.autocast`); the sums stay float32/64.

    The SPEC's variants: ``tap`` (``consumed`` or ``nonneg``: which activation a conv is scored
    on) and ``field`` (``theoretical`` or ``effective``, ``map-ex`` only: which receptive field
    maps the boxes; the effective fields are measured on the first batch, at most
    :data:`EFFECTIVE_FIELD_IMAGES` images). See :func:`check_variant` for the valid combinations.
    """
    check_variant(method, score, tap, field)
    batch_iterator = iter(batches)
    first = next(batch_iterator, None)
    if first is None:
        raise UserError("filter_scores got no batches: the task sample is empty")
    device = device_of(model)
    graph = trace_model(model)
    taps, geometries = _taps_and_geometries(model, graph, tap, input_size or tuple(first[0].shape[-2:]))
    fields = None
    if field == "effective":
        with eval_mode(model):
            fields = effective_fields(model, first[0][:EFFECTIVE_FIELD_IMAGES], taps, geometries)
    accumulator = ResponseAccumulator(geometries, method, device, fields)
    with (
        eval_mode(model),
        torch.inference_mode(),
        tap_outputs(model, taps, accumulator.add_tapped),
        autocast(device, amp),
    ):
        for batch in tqdm(
            itertools.chain([first], batch_iterator),
            total=_length(batches),
            desc=f"{method} scores",
            unit="batch",
            disable=None if progress else True,
        ):
            images = batch[0].to(device)
            accumulator.start_batch(batch[-1], tuple(images.shape[-2:]))
            model(images)
    return accumulator.scores(score)


def check_variant(method: str, score: str, tap: str = "consumed", field: str = "theoretical") -> None:
    """A :class:`UserError` naming the value, unless the variant is one of the SPEC's.

    ``contrast`` needs ``tap='nonneg'``: it is a contrast of non-negative responses and means
    nothing (its denominator may vanish or change sign) for signed ones. ``field='effective'``
    applies to ``map-ex`` only (``map`` uses no receptive field).
    """
    for what, value, valid in (
        ("foreground method", method, METHODS),
        ("score", score, SCORES),
        ("tap", tap, TAPS),
        ("field", field, FIELDS),
    ):
        if value not in valid:
            raise UserError(f"unknown {what} '{value}'; expected one of {', '.join(valid)}")
    if score == "contrast" and tap != "nonneg":
        raise UserError(f"score 'contrast' needs tap 'nonneg' (non-negative responses), got tap '{tap}'")
    if field == "effective" and method != "map-ex":
        raise UserError(f"field 'effective' applies to method 'map-ex' only, not to '{method}'")


def _taps_and_geometries(
    model: nn.Module, graph: fx.Graph, tap: str, input_size: tuple[int, int]
) -> tuple[dict[str, Tap], dict[str, LayerGeometry]]:
    """Per conv, its :class:`Tap` and the geometry of the tapped tensor.

    For ``consumed`` that is the conv's own geometry (BN and activations keep it); a ``nonneg``
    tap at a residual block's output has the merged geometry of the add (SPEC).
    """
    geometries = receptive_fields(model, input_size, graph)
    tap_nodes = _tap_nodes(model, graph, tap)
    if tap != "consumed":
        of_node = node_geometries(model, graph)
        geometries = {name: of_node[node] for name, (_tap, node) in tap_nodes.items()}
    return {name: found for name, (found, _node) in tap_nodes.items()}, geometries


def effective_fields(
    model: nn.Module, images: Tensor, taps: dict[str, Tap], geometries: dict[str, LayerGeometry]
) -> dict[str, EffectiveField]:
    """Per conv, the effective receptive field (Luo et al. 2016) of its tapped activation (SPEC).

    The sensitivity map is ``|∂ Σ_c A[c, y0, x0] / ∂ input|``, summed over the input's colour
    channels and averaged over ``images``, for the centre unit ``(h // 2, w // 2)``: one backward
    pass per distinct tapped tensor, the channels summed before it (as Luo et al. seed every
    channel's centre gradient with 1). A map that is zero everywhere (every image's centre unit
    dead) falls back to the unit's theoretical field, which gives the theoretical weights.
    The model must be in eval mode; its parameters' ``.grad`` are left untouched.
    """
    images = images.detach().to(device_of(model)).requires_grad_(True)
    measured: dict[Tap, EffectiveField] = {}  # convs that share a tap (nonneg, one block's output) share it
    with torch.enable_grad():
        with kept_outputs(model, {name: tap.module for name, tap in taps.items()}) as outputs:
            model(images)
        for name, tap in taps.items():
            if tap not in measured:
                measured[tap] = _effective_field(tap.read(outputs[name]), images, geometries[name])
    return {name: measured[tap] for name, tap in taps.items()}


def _effective_field(activation: Tensor, images: Tensor, geometry: LayerGeometry) -> EffectiveField:
    unit = (activation.shape[2] // 2, activation.shape[3] // 2)
    (gradient,) = torch.autograd.grad(
        activation[:, :, unit[0], unit[1]].sum(), images, retain_graph=True, allow_unused=True, materialize_grads=True
    )
    sensitivity = gradient.abs().sum(1).mean(0)
    if not bool(sensitivity.any()):
        sensitivity = field_box_map(geometry, unit, tuple(images.shape[-2:])).to(sensitivity)
    return EffectiveField.from_map(sensitivity, unit, geometry.jump)


def rank_correlation(scores: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    """Spearman correlation of two score sets over each conv layer's filters, averaged over the layers.

    Ties get their average rank. A layer whose reference scores are all equal has no ranking to
    agree with and is left out (NaN when every layer is such); one whose ``scores`` are all equal
    ranks nothing and counts as 0. (Leaving those out too would favour small samples: at small
    ``N`` whole layers can score exactly 0, and the average would then cover only the easy layers.)
    """
    layers = [name for name in reference if reference[name].unique().numel() > 1]
    per_layer = [
        _pearson(_average_ranks(scores[name]), _average_ranks(reference[name])).nan_to_num(0.0) for name in layers
    ]
    return float(torch.stack(per_layer).mean()) if per_layer else float("nan")


def _average_ranks(values: Tensor) -> Tensor:
    _, inverse, counts = torch.unique(values.flatten(), return_inverse=True, return_counts=True)
    first_rank = counts.cumsum(0) - counts
    return (first_rank + (counts - 1) / 2).double()[inverse]


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm())


@torch.no_grad()
def response_maps(
    model: nn.Module, images: Tensor, scores: dict[str, Tensor], layers: Sequence[str], fraction: float = 0.1
) -> tuple[Tensor, list[str]]:
    """What the best- and worst-scored filters of ``layers`` see in ``images``.

    Per layer, the mean consumed activation of the top and of the bottom ``fraction`` of its
    filters by score (at least one filter each), upsampled to the images' size. Returns
    ``[images, 2 * len(layers), H, W]`` CPU maps and one title per panel.
    """
    maps: dict[str, Tensor] = {}

    def keep(name: str, activation: Tensor) -> None:
        if name in layers:
            maps[name] = activation.detach().float()

    with eval_mode(model), tap_activations(model, keep):
        model(images.to(device_of(model)))
    panels, titles = [], []
    for name in layers:
        order = scores[name].argsort(descending=True)
        count = max(1, int(len(order) * fraction))
        for label, chosen in (("top", order[:count]), ("bottom", order[-count:])):
            mean_map = maps[name][:, chosen.to(maps[name].device)].mean(1, keepdim=True)
            panels.append(F.interpolate(mean_map, size=images.shape[-2:], mode="bilinear").squeeze(1).cpu())
            titles.append(f"{name}\n{label} {fraction:.0%} filters")
    return torch.stack(panels, 1), titles


def _length(batches: Iterable) -> int | None:
    return len(batches) if isinstance(batches, Sized) else None
