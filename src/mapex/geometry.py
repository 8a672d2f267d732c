"""Receptive-field geometry of conv layers and the box -> feature-map foreground weights (SPEC).

Three parts:

* :func:`receptive_fields` traces the model with ``torch.fx`` and propagates the SPEC recurrence
  ``j' = j*s``, ``r' = r + (k-1)*d*j``, ``c' = c + ((k-1)*d/2 - p)*j`` from the input
  (``j = 1, r = 1, c = 0``) through convs and pools, giving every ``nn.Conv2d`` the geometry of
  its *output* (:func:`node_geometries`: of every node's output).
* :func:`foreground_weights` / :func:`batch_foreground_weights` turn an image's boxes into a
  weight per unit of a layer's feature map, for the ``map`` and ``map-ex`` methods.
* :func:`effective_foreground_weights`: the ``map-ex`` weights under a measured
  :class:`EffectiveField` instead of the theoretical receptive field (SPEC's field variant).

Pixel rule for boxes (SPEC says pixel ``p`` covers ``[p, p+1)`` and an integer box ``x0..x1``
covers pixels ``x0 … x1-1``): a pixel is inside a box when its centre ``p + 0.5`` lies in
``[x0, x1)``. This is exactly SPEC's rule for integer boxes and extends it to the non-integer
boxes that resizing produces.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils.rnn import pad_sequence

from mapex.io import UserError

METHODS = ("map", "map-ex")


@dataclass(frozen=True)
class LayerGeometry:
    """Where a layer's units sit in the input: SPEC's ``j_l``, ``r_l`` and ``c_l``.

    ``jump``: input pixels between adjacent units; ``size``: receptive-field side in pixels;
    ``start``: pixel coordinate of unit 0's centre (a half-integer where an even kernel was crossed).
    """

    jump: float
    size: int
    start: float


_INPUT_GEOMETRY = LayerGeometry(jump=1.0, size=1, start=0.0)

# Modules, functions and methods whose output is not a spatial map: SPEC's spatial part ends at
# global pooling / flatten / the classifier; shape queries (getattr, size) give no tensor at all.
_SPATIAL_END_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear)
_SPATIAL_END_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten, F.linear, getattr}
_SPATIAL_END_METHODS = {"view", "reshape", "flatten", "mean", "sum", "amax", "max", "squeeze", "size", "dim"}
# Spatial operations whose geometry we do not model: refusing is better than a silent wrong answer.
_UNSUPPORTED_MODULES = (
    nn.ConvTranspose2d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.FractionalMaxPool2d,
    nn.LPPool2d,
    nn.Fold,
    nn.Unfold,
)
_UNSUPPORTED_FUNCTIONS = {
    F.conv2d,
    F.conv_transpose2d,
    F.interpolate,
    F.pixel_shuffle,
    F.pixel_unshuffle,
    F.unfold,
    F.fold,
}


def trace_model(model: nn.Module) -> fx.Graph:
    """The model's ``torch.fx`` graph; a :class:`UserError` naming the model if it cannot be traced.

    Geometry and activation taps are both read from this graph. Models with data-dependent
    control flow cannot be traced; we raise rather than guess (no hook-based fallback).
    """
    try:
        return fx.Tracer().trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...)
        raise UserError(
            f"cannot trace {type(model).__name__} with torch.fx to find its receptive fields "
            f"and activations ({type(err).__name__}: {err})"
        ) from err


def receptive_fields(
    model: nn.Module, input_size: tuple[int, int], graph: fx.Graph | None = None
) -> dict[str, LayerGeometry]:
    """Geometry of every ``nn.Conv2d`` reached from the input, keyed by qualified module name.

    Convs, ``MaxPool2d`` and ``AvgPool2d`` (modules or ``F.max_pool2d`` / ``F.avg_pool2d``) apply
    the recurrence; elementwise ops, BN, activations, dropout, ... pass the geometry through.
    Where paths merge (add, cat, mul, ...) the result has the largest receptive field of the
    inputs and the jump and centre of the first tensor argument (the main path, SPEC).
    Adaptive pooling, flatten, view and linear end the spatial part.

    ``input_size`` is checked but does not enter the recurrence: SPEC's geometry depends on the
    layers only, not on the image size (clipping to the image happens in the weights).
    ``graph``: the model's :func:`trace_model` graph, where the caller already has it.
    """
    if len(input_size) != 2 or min(input_size) < 1:
        raise UserError(f"input_size must be (height, width) in pixels, got {input_size}")
    modules = dict(model.named_modules())
    conv_geometry: dict[str, LayerGeometry] = {}
    for node, geometry in node_geometries(model, graph).items():
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            _record_conv(conv_geometry, node.target, geometry)
    return conv_geometry


def node_geometries(model: nn.Module, graph: fx.Graph | None = None) -> dict[fx.Node, LayerGeometry | None]:
    """Geometry of every node's output in the model's graph (``None`` where it is not a spatial map).

    The same recurrence as :func:`receptive_fields`, for tensors that are not a conv's output
    (e.g. a residual block's output after the add).
    """
    modules = dict(model.named_modules())
    geometry_of: dict[fx.Node, LayerGeometry | None] = {}
    for node in (graph or trace_model(model)).nodes:
        geometry_of[node] = _node_geometry(node, modules, geometry_of)
    return geometry_of


def _record_conv(conv_geometry: dict[str, LayerGeometry], name: str, geometry: LayerGeometry | None) -> None:
    if geometry is None:
        raise UserError(f"conv '{name}' is not on a spatial path from the input; cannot place its units")
    if conv_geometry.setdefault(name, geometry) != geometry:
        raise UserError(f"conv '{name}' is called at two places with different receptive fields")


def _node_geometry(
    node: fx.Node, modules: dict[str, nn.Module], geometry_of: dict[fx.Node, LayerGeometry | None]
) -> LayerGeometry | None:
    """Geometry of one graph node's output, or ``None`` where it is not a spatial map."""
    if node.op == "placeholder":
        is_first_input = not any(n.op == "placeholder" for n in geometry_of)
        return _INPUT_GEOMETRY if is_first_input else None
    inputs = [geometry_of[arg] for arg in _input_nodes(node)]
    inputs = [g for g in inputs if g is not None]
    if node.op in ("get_attr", "output") or not inputs:
        return None
    if node.op == "call_module":
        return _module_geometry(modules[node.target], node.target, inputs)
    if node.op == "call_function":
        return _function_geometry(node, inputs)
    if node.op == "call_method" and node.target in _SPATIAL_END_METHODS:
        return None
    return _merge_geometries(inputs)


def _input_nodes(node: fx.Node) -> list[fx.Node]:
    """The node's tensor arguments in argument order (lists such as ``torch.cat``'s included)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _merge_geometries(inputs: Sequence[LayerGeometry]) -> LayerGeometry:
    """Merge of paths (SPEC): largest receptive field; jump and centre of the first (main) path."""
    main = inputs[0]
    return LayerGeometry(jump=main.jump, size=max(g.size for g in inputs), start=main.start)


def _module_geometry(module: nn.Module, name: str, inputs: list[LayerGeometry]) -> LayerGeometry | None:
    if isinstance(module, _SPATIAL_END_MODULES):
        return None
    if isinstance(module, _UNSUPPORTED_MODULES):
        raise UserError(
            f"module '{name}' ({type(module).__name__}) changes the spatial layout in a way "
            "the receptive-field recurrence does not cover"
        )
    if isinstance(module, nn.Conv2d):
        padding = _conv_padding(module)
        return _apply_window(inputs[0], module.kernel_size, module.stride, padding, module.dilation, name)
    if isinstance(module, nn.MaxPool2d):
        return _apply_window(inputs[0], module.kernel_size, module.stride, module.padding, module.dilation, name)
    if isinstance(module, nn.AvgPool2d):
        return _apply_window(inputs[0], module.kernel_size, module.stride, module.padding, 1, name)
    return _merge_geometries(inputs)


def _conv_padding(conv: nn.Conv2d) -> Any:
    """Numeric padding of a conv; ``'same'`` pads ``d*(k-1)//2`` before (PyTorch puts the odd pixel after)."""
    if conv.padding == "valid":
        return 0
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return conv.padding


def _function_geometry(node: fx.Node, inputs: list[LayerGeometry]) -> LayerGeometry | None:
    target = node.target
    if target in _SPATIAL_END_FUNCTIONS:
        return None
    if target in _UNSUPPORTED_FUNCTIONS:
        raise UserError(
            f"'{node.name}' ({getattr(target, '__name__', target)}) changes the spatial layout "
            "in a way the receptive-field recurrence does not cover; use nn modules instead"
        )
    if target is F.max_pool2d or target is F.avg_pool2d:
        return _functional_pool_geometry(node, inputs[0])
    if target is operator.getitem:  # one output of a tuple, or a channel slice
        return inputs[0]
    return _merge_geometries(inputs)


def _functional_pool_geometry(node: fx.Node, geometry: LayerGeometry) -> LayerGeometry:
    """``F.max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ...)`` and ``F.avg_pool2d``."""
    names = ("input", "kernel_size", "stride", "padding", "dilation")
    options = {**dict(zip(names, node.args)), **node.kwargs}
    kernel = options["kernel_size"]
    stride = options.get("stride") or kernel  # None or () mean "same as the kernel"
    dilation = options.get("dilation", 1) if node.target is F.max_pool2d else 1
    return _apply_window(geometry, kernel, stride, options.get("padding", 0), dilation, node.name)


def _apply_window(
    geometry: LayerGeometry, kernel: Any, stride: Any, padding: Any, dilation: Any, name: str
) -> LayerGeometry:
    """SPEC's recurrence through one conv or pool window (square ints or pairs of equal ints)."""
    k, s, p, d = (
        _square(value, what, name)
        for value, what in ((kernel, "kernel"), (stride, "stride"), (padding, "padding"), (dilation, "dilation"))
    )
    j = geometry.jump
    return LayerGeometry(
        jump=j * s,
        size=int(round(geometry.size + (k - 1) * d * j)),
        start=geometry.start + ((k - 1) * d / 2 - p) * j,
    )


def _square(value: Any, what: str, name: str) -> int:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(set(values)) != 1 or not isinstance(values[0], int):
        raise UserError(f"'{name}' has {what} {value}: only square windows (equal integers) are supported")
    return values[0]


# --------------------------------------------------------------------------- foreground weights


class BoxBatch:
    """The boxes of a batch of images, prepared once and shared by every layer.

    ``boxes``: ``[B, K, 4]``, each image's boxes padded with empty boxes to the batch's largest
    count; ``mask``: ``[B, H, W]`` bool, the pixels inside the union of the image's boxes
    (pixel-centre rule); ``integral``: ``[B, H+1, W+1]`` integral image (2-D cumulative sum, zero first row and
    column) of ``mask``.
    """

    def __init__(self, boxes: Sequence[Tensor], image_hw: tuple[int, int], device: torch.device | str = "cpu"):
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.boxes = _pad_boxes(boxes, torch.device(device))
        self.mask = _union_mask(self.boxes, self.image_hw)
        self.integral = _integral_image(self.mask)


def _pad_boxes(boxes: Sequence[Tensor], device: torch.device) -> Tensor:
    as_tensors = [torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4) for b in boxes]
    return pad_sequence(as_tensors, batch_first=True)  # zero rows are empty boxes: they cover nothing


def _inside(points: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``[B, K, n]``: ``low <= point < high`` for every image, box and point (half-open boxes)."""
    return (low[..., None] <= points) & (points < high[..., None])


def _union_mask(boxes: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """``[B, H, W]`` bool: pixel centre ``p + 0.5`` inside at least one of the image's boxes."""
    height, width = image_hw
    row_centres = torch.arange(height, dtype=boxes.dtype, device=boxes.device) + 0.5
    col_centres = torch.arange(width, dtype=boxes.dtype, device=boxes.device) + 0.5
    rows = _inside(row_centres, boxes[..., 1], boxes[..., 3])
    cols = _inside(col_centres, boxes[..., 0], boxes[..., 2])
    return (rows[..., :, None] & cols[..., None, :]).any(dim=1)


def _integral_image(mask: Tensor) -> Tensor:
    """Float32 counts: exact integers up to 2**24 pixels, i.e. images up to 4096 x 4096."""
    counts = mask.to(torch.float32).cumsum(dim=1).cumsum(dim=2)
    return F.pad(counts, (1, 0, 1, 0))


def _unit_centres(geometry: LayerGeometry, count: int, device: torch.device | str = "cpu") -> Tensor:
    """Pixel coordinate of the centres of units ``0 … count-1`` along one axis."""
    return geometry.start + geometry.jump * torch.arange(count, dtype=torch.float32, device=device)


def _clipped_field(geometry: LayerGeometry, count: int, extent: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per unit along one axis, first and one-past-last pixel of its receptive field, clipped to the image.

    ``L = centre - (r-1)/2`` is an integer by construction; ``round`` only removes float noise.
    """
    first = torch.round(_unit_centres(geometry, count, device) - (geometry.size - 1) / 2).to(torch.int64)
    return first.clamp(0, extent), (first + geometry.size).clamp(0, extent)


def batch_foreground_weights(
    geometry: LayerGeometry, feature_hw: tuple[int, int], boxes: BoxBatch, method: str
) -> Tensor:
    """``[B, h, w]`` float32 foreground weight of every unit of a layer, for every image of a batch.

    ``map``: 1 where the unit centre, taken at ``centre + 0.5``, lies inside a box, else 0.
    ``map-ex``: covered pixels / pixels of the unit's clipped receptive field, read from the
    batch's integral image (four look-ups per unit). A unit whose clipped field is empty (only
    possible with padding wider than the field) gets weight 0.
    """
    if method == "map":
        return _centre_weights(geometry, feature_hw, boxes.boxes)
    if method == "map-ex":
        return _field_weights(geometry, feature_hw, boxes)
    raise UserError(f"unknown foreground method '{method}'; expected one of {', '.join(METHODS)}")


def _centre_weights(geometry: LayerGeometry, feature_hw: tuple[int, int], boxes: Tensor) -> Tensor:
    height, width = feature_hw
    y = _unit_centres(geometry, height, boxes.device) + 0.5
    x = _unit_centres(geometry, width, boxes.device) + 0.5
    rows = _inside(y, boxes[..., 1], boxes[..., 3])
    cols = _inside(x, boxes[..., 0], boxes[..., 2])
    return (rows[..., :, None] & cols[..., None, :]).any(dim=1).to(torch.float32)


def _field_weights(geometry: LayerGeometry, feature_hw: tuple[int, int], boxes: BoxBatch) -> Tensor:
    integral = boxes.integral
    top, bottom = _clipped_field(geometry, feature_hw[0], boxes.image_hw[0], integral.device)
    left, right = _clipped_field(geometry, feature_hw[1], boxes.image_hw[1], integral.device)
    row_bands = integral.index_select(1, bottom) - integral.index_select(1, top)  # [B, h, W+1]
    covered = row_bands.index_select(2, right) - row_bands.index_select(2, left)  # [B, h, w]
    area = (bottom - top)[:, None] * (right - left)[None, :]
    return covered / area.clamp(min=1).to(torch.float32)


def foreground_weights(
    geom: LayerGeometry,
    feature_hw: tuple[int, int],
    boxes: Tensor,
    image_hw: tuple[int, int],
    method: str,
) -> Tensor:
    """``[h, w]`` foreground weight in ``[0, 1]`` of every unit of a layer, for one image's boxes.

    ``boxes``: ``[k, 4]`` ``x0, y0, x1, y1`` in input pixels, half-open; ``k = 0`` gives zeros.
    See :func:`batch_foreground_weights` for the two methods.
    """
    device = boxes.device if isinstance(boxes, Tensor) else "cpu"
    return batch_foreground_weights(geom, feature_hw, BoxBatch([boxes], image_hw, device), method)[0]


# --------------------------------------------------------------------------- effective receptive fields


@dataclass(frozen=True, eq=False)
class EffectiveField:
    """A layer's effective receptive field (Luo et al. 2016) as a kernel over input pixels (SPEC).

    ``kernel [kh, kw]`` is non-negative and sums to 1. For unit ``(y, x)`` of the layer it weighs
    the pixel rows ``first[0] + y*jump …`` and columns ``first[1] + x*jump …``: the measured
    kernel shifted by the unit's offset, which may reach outside the image.
    """

    kernel: Tensor
    first: tuple[int, int]
    jump: int

    @classmethod
    def from_map(cls, sensitivity: Tensor, unit: tuple[int, int], jump: float) -> EffectiveField:
        """From ``sensitivity [H, W]``, how much each input pixel moves unit ``unit`` (non-negative,
        not all zero): cropped to its non-zero bounding box (no approximation) and normalised to sum 1."""
        if jump != int(jump):
            raise UserError(f"effective receptive fields need an integer jump between units, got {jump}")
        rows, cols = sensitivity.sum(1).nonzero()[:, 0], sensitivity.sum(0).nonzero()[:, 0]
        if len(rows) == 0:
            raise UserError(f"unit {unit} depends on no input pixel: no effective receptive field to measure")
        top, left = int(rows[0]), int(cols[0])
        kernel = sensitivity[top : int(rows[-1]) + 1, left : int(cols[-1]) + 1]
        jump = int(jump)
        return cls(kernel / kernel.sum(), (top - unit[0] * jump, left - unit[1] * jump), jump)


def field_box_map(geometry: LayerGeometry, unit: tuple[int, int], image_hw: tuple[int, int]) -> Tensor:
    """``[H, W]`` float32: 1 on the pixels of unit ``unit``'s clipped theoretical receptive field, else 0."""
    mask = torch.zeros(image_hw)
    top, bottom = (int(v[unit[0]]) for v in _clipped_field(geometry, unit[0] + 1, image_hw[0], "cpu"))
    left, right = (int(v[unit[1]]) for v in _clipped_field(geometry, unit[1] + 1, image_hw[1], "cpu"))
    mask[top:bottom, left:right] = 1
    return mask


def effective_foreground_weights(field: EffectiveField, feature_hw: tuple[int, int], boxes: BoxBatch) -> Tensor:
    """``[B, h, w]`` float32 foreground weight of every unit under its effective receptive field.

    ``w_u = Σ_p K(p − c_u)·box(p) / Σ_p K(p − c_u)·inimage(p)``: the kernel-weighted share of the
    unit's in-image pixels that lie in a box; 0 for a unit whose kernel misses the image. Both sums
    are one strided ``conv2d`` of the mask with the kernel, for the whole batch.
    """
    covered = _kernel_sums(boxes.mask[:, None].to(torch.float32), field, feature_hw)
    in_image = _kernel_sums(torch.ones(1, 1, *boxes.image_hw, device=boxes.mask.device), field, feature_hw)
    weights = covered / in_image.clamp(min=torch.finfo(torch.float32).tiny)
    return torch.where(in_image > 0, weights.clamp(0, 1), 0.0)


def _kernel_sums(mask: Tensor, field: EffectiveField, feature_hw: tuple[int, int]) -> Tensor:
    """``[N, h, w]``: per unit, the sum of ``mask [N, 1, H, W]`` weighted by the unit's shifted kernel.

    The mask is zero-padded (or cropped, by negative padding) so that unit ``u``'s window starts at
    ``u * jump`` of the padded mask.
    """
    padding: list[int] = []
    for axis in (1, 0):  # F.pad takes the last dimension first
        before = -field.first[axis]
        after = (
            field.first[axis] + (feature_hw[axis] - 1) * field.jump + field.kernel.shape[axis] - mask.shape[2 + axis]
        )
        padding += [before, after]
    kernel = field.kernel.to(mask.device, mask.dtype)[None, None]
    return F.conv2d(F.pad(mask, padding), kernel, stride=field.jump)[:, 0]


def whole_image_units(geometry: LayerGeometry, feature_hw: tuple[int, int], image_hw: tuple[int, int]) -> Tensor:
    """``[h, w]`` bool: units whose clipped theoretical receptive field is the whole image.

    Their ``map-ex`` weight is the boxes' share of the image, the same for every such unit, so an
    image whose units are all like this has ``F_i = B_i`` (the issue of 64-pixel inputs).
    """
    rows = _covers_extent(geometry, feature_hw[0], image_hw[0])
    cols = _covers_extent(geometry, feature_hw[1], image_hw[1])
    return rows[:, None] & cols[None, :]


def _covers_extent(geometry: LayerGeometry, count: int, extent: int) -> Tensor:
    first, end = _clipped_field(geometry, count, extent, "cpu")
    return (first == 0) & (end == extent)
