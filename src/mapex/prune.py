"""Physical filter pruning through Torch-Pruning's dependency graph.

Filters are removed from the modules (the model shrinks; nothing is masked). Channels that are
coupled (residual adds, depthwise convs, concats) form one Torch-Pruning *group* and are removed
together; a group is ranked by its :class:`~mapex.criteria.Criterion` score (the mean of its conv
members' scores) and its lowest-scored channels are removed.

How many filters a group keeps, for a ratio ``r`` of filters removed:

- local ranking (default): ``round((1 - r) * C)`` of its ``C`` channels;
- global ranking: the channels among the top ``round((1 - r) * N)`` group scores of all ``N``
  prunable channels (each group counted once), each group's scores first divided by their mean
  magnitude so that layers of different scales compete on equal terms;

in both cases at least one, and with ``round_to`` the nearest multiple of it (at least ``round_to``;
groups of at most ``round_to`` channels are not rounded). We fix these counts ourselves and hand
Torch-Pruning, per conv, the ratio that makes it keep exactly that many of the top-scored
channels: its own count, ``int(C * (1 - r))``, can fall one short through floating point
(``int(100 * 0.71) == 70``), and its global mode silently skips a group whose every channel falls
below the threshold, instead of keeping its best one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from mapex import io
from mapex.criteria import Criterion, is_conv_out_pruning
from mapex.identity import load_checked
from mapex.models import STEMS, build_model, classifier_name, conv_layers, count_macs_and_params, device_of, eval_mode


@dataclasses.dataclass
class PruneReport:
    """What one call of :func:`prune_model` removed. ``kept`` holds original filter indices."""

    criterion: str
    ratio: float
    global_pruning: bool
    exempt: list[str]
    kept: dict[str, list[int]]
    filters_before: dict[str, int]
    filters_after: dict[str, int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def params_removed(self) -> float:
        """Fraction of the parameters removed."""
        return 1.0 - self.params_after / self.params_before

    @property
    def macs_removed(self) -> float:
        """Fraction of the multiply-accumulates (per image) removed."""
        return 1.0 - self.macs_after / self.macs_before

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "params_removed": self.params_removed,
            "macs_removed": self.macs_removed,
        }


def prune_model(
    model: nn.Module,
    importance: Criterion,
    ratio: float,
    example_input: Tensor,
    global_pruning: bool = False,
    exempt: Sequence[str] | None = None,
    round_to: int | None = None,
    keep: dict[str, int] | None = None,
) -> PruneReport:
    """Remove the fraction ``ratio`` of the output filters of every prunable conv, in place.

    ``example_input`` (one image is enough; the first is used) traces the model and counts MACs.
    ``importance`` must hold scores for every conv of ``model`` (from ``compute`` or given
    precomputed). ``exempt`` names modules left whole (default: the first conv and the
    classifier, see :func:`default_exempt`); a group that contains an exempt module is not pruned.
    ``round_to`` rounds the kept channel counts to multiples of it (e.g. 8 for fast kernels).
    ``keep`` (conv name -> count) fixes how many filters each named conv keeps instead (convs not
    named keep all; coupled convs must be given the same count): the sanity check draws random
    prunings at another criterion's shapes with it, and the sensitivity study prunes one group.
    """
    if not 0.0 <= ratio < 1.0:
        raise io.UserError(f"pruning ratio must be in [0, 1), got {ratio}")
    if round_to is not None and round_to < 1:
        raise io.UserError(f"round_to must be a positive integer, got {round_to}")
    example_input = example_input[:1].to(device_of(model))
    names = {module: name for name, module in model.named_modules()}
    exempt = list(default_exempt(model, example_input) if exempt is None else exempt)
    ignored = [module for name in exempt for module in _module_named(model, name).modules()]
    importance.bind(model)
    filters_before = _filter_counts(model)
    macs_before, params_before = count_macs_and_params(model, tuple(example_input.shape[-2:]))

    pruned: dict[str, list[int]] = {}
    with eval_mode(model), torch.enable_grad():  # Torch-Pruning traces through autograd
        if keep is not None:
            kept = {conv: keep.get(name, conv.out_channels) for name, conv in conv_layers(model)}
        elif global_pruning:
            kept = _globally_kept(model, importance, ratio, example_input, ignored, round_to)
        else:
            kept = {conv: kept_count(conv.out_channels, ratio, round_to) for _, conv in conv_layers(model)}
        pruner = _make_pruner(model, importance, kept, example_input, ignored)
        for group in pruner.step(interactive=True):
            pruned.update(_pruned_conv_filters(group, names))
            group.prune()

    macs_after, params_after = count_macs_and_params(model, tuple(example_input.shape[-2:]))
    return PruneReport(
        criterion=importance.name,
        ratio=ratio,
        global_pruning=global_pruning,
        exempt=exempt,
        kept={name: sorted(set(range(count)) - set(pruned.get(name, []))) for name, count in filters_before.items()},
        filters_before=filters_before,
        filters_after=_filter_counts(model),
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
    )


def kept_count(channels: int, ratio: float, round_to: int | None = None) -> int:
    """Filters a layer of ``channels`` keeps when the fraction ``ratio`` is removed (local ranking)."""
    return _rounded(round((1.0 - ratio) * channels), channels, round_to)


def _rounded(kept: int, channels: int, round_to: int | None) -> int:
    """``kept`` made at least 1 and, if ``round_to``, the nearest multiple of it (at least ``round_to``)."""
    kept = max(1, kept)
    if round_to is None or channels <= round_to:
        return kept
    return min(channels, max(round_to, round_to * round(kept / round_to)))


def default_exempt(model: nn.Module, example_input: Tensor) -> list[str]:
    """Names of the first conv that runs and the last ``nn.Linear`` that runs (the classifier)."""
    order: list[str] = []
    hooks = [
        module.register_forward_hook(lambda *_, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    convs = [name for name in order if isinstance(modules[name], nn.Conv2d)]
    linears = [name for name in order if isinstance(modules[name], nn.Linear)]
    return convs[:1] + linears[-1:]


def prunable_groups(model: nn.Module, example_input: Tensor, exempt: Sequence[str] | None = None) -> list[list[str]]:
    """The conv names of each group of coupled output channels that :func:`prune_model` may prune."""
    example_input = example_input[:1].to(device_of(model))
    names = {module: name for name, module in model.named_modules()}
    exempt = list(default_exempt(model, example_input) if exempt is None else exempt)
    ignored = [module for name in exempt for module in _module_named(model, name).modules()]
    with eval_mode(model), torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        groups = graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d])
        return [
            sorted({names[item.dep.target.module] for item in group if is_conv_out_pruning(item.dep)})
            for group in groups
        ]


MODEL_FORMAT = "mapex-model/2"
SCORES_FORMAT = "mapex-scores/1"


def save_pruned(model: nn.Module, path: Any, meta: dict[str, Any]) -> None:
    """Save a (pruned) model as its weights plus what rebuilds its shapes: arch, stem, classes.

    ``meta["arch"]`` is required; ``num_classes`` is read from the model's classifier and the
    stem, when ``meta`` lacks it, from the model's layer layout. The file holds tensors and plain
    values only, so :func:`load_pruned` reads it without unpickling any code.
    """
    if "arch" not in meta:
        raise ValueError("save_pruned needs meta['arch'] to make the model rebuildable")
    num_classes = model.get_submodule(classifier_name(model)).out_features
    stem = meta.get("stem") or _matching_stem(model, meta["arch"], num_classes)
    if _layout(_skeleton(meta["arch"], num_classes, stem)) != _layout(model):
        raise ValueError(f"the model's layers are not those of a {meta['arch']} with the {stem} stem")
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    full_meta = {**meta, "stem": stem, "num_classes": num_classes}
    io.save_torch(path, {"format": MODEL_FORMAT, "meta": full_meta, "state_dict": state})


def load_pruned(path: Any, expect: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load what :func:`save_pruned` wrote: ``(model, meta)``; ``meta`` must match ``expect``.

    The unpruned network is built on the meta device (no memory, no init), each layer is cut to
    the shapes of the saved weights, and the weights are assigned.
    """
    saved = load_checked(path, MODEL_FORMAT, "a model", expect)
    meta, state = saved["meta"], saved.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise io.UserError(f"{path}: its state_dict is not a mapping of tensors")
    arch, stem, num_classes = (meta.get(key) for key in ("arch", "stem", "num_classes"))
    if not isinstance(arch, str) or not isinstance(stem, str) or not isinstance(num_classes, int):
        raise io.UserError(
            f"{path}: meta lacks arch, stem or num_classes (arch={arch!r}, stem={stem!r}, num_classes={num_classes!r})"
        )
    try:
        model = _skeleton(arch, num_classes, stem)
        _resize_to(model, state)
        model.load_state_dict(state, strict=True, assign=True)
    except io.UserError as err:
        raise io.UserError(f"{path}: {err}") from err
    except (RuntimeError, ValueError, IndexError) as err:
        raise io.UserError(
            f"{path}: its weights do not fit a {arch} ({stem} stem, {num_classes} classes): "
            f"{str(err).strip().splitlines()[-1].strip()[:200]}"
        ) from err
    if any(tensor.is_meta for tensor in itertools.chain(model.parameters(), model.buffers())):
        raise io.UserError(f"{path}: its weights do not cover every layer of a {arch} ({stem} stem)")
    _check_runs(model, path)
    return model, meta


def _check_runs(model: nn.Module, path: Any) -> None:
    """One forward pass of a small image: weights whose shapes do not chain (a BatchNorm narrower
    than its conv) are found here, naming the file, not in the middle of a stage."""
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, 3, 64, 64))
    except RuntimeError as err:
        raise io.UserError(f"{path}: its weights do not fit together ({' '.join(str(err).split())[:160]})") from err


def save_scores(path: Any, scores: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Save per-conv filter scores (on the CPU) with the identity of what they were computed on."""
    io.save_torch(
        path,
        {
            "format": SCORES_FORMAT,
            "meta": meta,
            "scores": {name: score.detach().cpu() for name, score in scores.items()},
        },
    )


def load_scores(path: Any, expect: dict[str, Any] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load what :func:`save_scores` wrote: ``(scores, meta)``; ``meta`` must match ``expect``."""
    saved = load_checked(path, SCORES_FORMAT, "a scores file", expect)
    scores = saved.get("scores")
    if (
        not isinstance(scores, dict)
        or not scores
        or not all(
            isinstance(score, Tensor) and score.dim() == 1 and score.is_floating_point() for score in scores.values()
        )
    ):
        raise io.UserError(f"{path}: its scores are not one 1-D float tensor per conv layer")
    return scores, saved["meta"]


def _skeleton(arch: str, num_classes: int, stem: str) -> nn.Module:
    """The unpruned network on the meta device: its layout and shapes, without weights."""
    with torch.device("meta"):
        return build_model(arch, num_classes, stem=stem)


def _matching_stem(model: nn.Module, arch: str, num_classes: int) -> str:
    for stem in STEMS:
        if _layout(_skeleton(arch, num_classes, stem)) == _layout(model):
            return stem
    raise ValueError(f"the model's layers match no stem of {arch}")


def _layout(model: nn.Module) -> list[tuple[Any, ...]]:
    """Each module's name, type and what its weights do not show (kernel, stride, padding, dilation)."""
    return [
        (
            name,
            type(module).__name__,
            *(getattr(module, key, None) for key in ("kernel_size", "stride", "padding", "dilation")),
        )
        for name, module in model.named_modules()
    ]


def _resize_to(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Give every parameter and buffer the shape of its saved tensor, and every layer matching sizes.

    Torch-Pruning changed exactly these: channel counts of convs, BatchNorms and Linears (and the
    groups of depthwise convs, which keep ``groups == in_channels == out_channels``).
    """
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            saved = state.get(prefix + name)
            if saved is not None and saved.shape != tensor.shape:
                empty = torch.empty(saved.shape, dtype=tensor.dtype, device="meta")
                setattr(
                    module,
                    name,
                    nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty,
                )
        _match_sizes(module)


def _match_sizes(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = module.weight.shape[0]
        if depthwise:
            module.groups = module.in_channels = module.out_channels
        else:
            module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = (
            module.running_mean.shape[0] if module.running_mean is not None else module.weight.shape[0]
        )
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape


def _globally_kept(
    model: nn.Module,
    importance: Criterion,
    ratio: float,
    example_input: Tensor,
    ignored: list[nn.Module],
    round_to: int | None,
) -> dict[nn.Conv2d, int]:
    """Per conv, how many filters its group keeps when all groups' channels are ranked together."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]))
    if not groups:
        return {}
    scores = [_layer_normalised(importance(group)) for group in groups]
    owners = torch.cat([torch.full((len(group_scores),), i) for i, group_scores in enumerate(scores)])
    best = torch.cat(scores).argsort(descending=True)[: round((1.0 - ratio) * len(owners))]
    counts = torch.bincount(owners[best], minlength=len(groups)).tolist()
    return {
        item.dep.target.module: _rounded(count, len(group_scores), round_to)
        for group, group_scores, count in zip(groups, scores, counts)
        for item in group
        if is_conv_out_pruning(item.dep)
    }


def _layer_normalised(scores: Tensor) -> Tensor:
    """A group's scores divided by their mean magnitude, so that global ranking compares how a channel
    stands within its own layer, not the layers' scales (an L1 norm grows with fan-in; SPEC, our rule).
    A group whose scores are all 0 stays 0."""
    scale = scores.abs().mean()
    return scores / scale if scale > 0 else scores


def _make_pruner(
    model: nn.Module,
    importance: Criterion,
    kept: dict[nn.Conv2d, int],
    example_input: Tensor,
    ignored: list[nn.Module],
) -> tp.pruner.BasePruner:
    """A one-step Torch-Pruning pruner that leaves each conv's group ``kept[conv]`` channels.

    Only convs are pruning roots (Linears lose inputs, never outputs); ranking is per group.
    """
    return tp.pruner.BasePruner(
        model=model,
        example_inputs=example_input,
        importance=importance,
        ignored_layers=ignored,
        root_module_types=[nn.Conv2d],
        pruning_ratio=0.0,
        pruning_ratio_dict={conv: _ratio_keeping(count, conv.out_channels) for conv, count in kept.items()},
    )


def _ratio_keeping(kept: int, channels: int) -> float:
    """The ratio for which Torch-Pruning, which keeps ``int(channels * (1 - ratio))``, keeps ``kept``."""
    return max(0.0, (channels - kept - 0.5) / channels)


def _pruned_conv_filters(group: tp.Group, names: dict[nn.Module, str]) -> dict[str, list[int]]:
    """The filters this group removes from each conv in it (the group is applied only once)."""
    return {
        names[item.dep.target.module]: [int(i) for i in item.idxs] for item in group if is_conv_out_pruning(item.dep)
    }


def _filter_counts(model: nn.Module) -> dict[str, int]:
    return {name: conv.out_channels for name, conv in conv_layers(model)}


def _module_named(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise io.UserError(f"exempt module '{name}' is not in the model") from err
