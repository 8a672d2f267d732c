"""Filter-importance criteria as Torch-Pruning importances, registered by name.

Every criterion gives each output filter of every ``nn.Conv2d`` one score, higher = keep. It
computes them once (:meth:`Criterion.compute`) or takes them precomputed (so one stage can score
and save, and a later stage prune). Torch-Pruning then asks it for the score of a *group* of
coupled channels (:meth:`Criterion.__call__`); the SPEC fixes that as the mean of the scores of
the group's conv members.

Data-driven criteria read the same ``batches`` iterable, of ``(images, labels, boxes)`` or
``(images, boxes)``, and look at each conv's *consumed activation* (the tensor the next layer
reads: after the BN and ReLU that follow the conv, where they exist), tapped by
:mod:`mapex.statistics`. They accumulate running sums, so memory does not grow with the number of
samples, and run the model in eval mode (BN running statistics, no dropout).

A criterion with variants declares them in its ``OPTIONS`` and takes them as constructor
keywords (``map-ex``: ``score``, ``tap``, ``field``; ``map``: ``score``, ``tap``);
:func:`criterion_options` lists them so that a caller can validate its parameters up front.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from mapex import io, statistics
from mapex.models import conv_layers, device_of, eval_mode

Batch = tuple[Any, ...]
ScoreDict = dict[str, Tensor]

CONV_OUT_PRUNING = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels)


def is_conv_out_pruning(dep: tp.Dependency) -> bool:
    """Whether a group member removes output filters of a ``Conv2d``."""
    return isinstance(dep.target.module, nn.Conv2d) and dep.handler in CONV_OUT_PRUNING


class Criterion(tp.importance.Importance):
    """Base class: per-filter scores by conv name, and their group mean for Torch-Pruning.

    Subclasses set ``name`` and ``needs_data`` and implement :meth:`_score`. A criterion with
    variants declares them in ``OPTIONS`` (option -> allowed values, the first is the default;
    Torch-Pruning importances take theirs as constructor arguments too), takes each as a
    constructor keyword argument and checks it with :meth:`_check_options`.
    """

    name: ClassVar[str]
    needs_data: ClassVar[bool]
    OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, scores: Mapping[str, Tensor] | None = None) -> None:
        self.scores: ScoreDict = _clean(scores or {})
        self._module_scores: dict[nn.Module, Tensor] = {}

    def _check_options(self, **values: str) -> None:
        """A :class:`mapex.io.UserError` naming the option and value unless every value is allowed."""
        for option, value in values.items():
            allowed = self.OPTIONS[option]
            if value not in allowed:
                raise io.UserError(f"criterion '{self.name}': unknown {option} '{value}'; valid: {', '.join(allowed)}")

    @classmethod
    def from_params(
        cls, options: Mapping[str, str], seed: int, scores: Mapping[str, Tensor] | None = None
    ) -> Criterion:
        """The criterion as a row of the study asks for it: its ``options`` from params, the run's
        ``seed`` where the criterion draws (``random`` does), precomputed ``scores`` if given."""
        return get_criterion(cls.name, scores=scores, **options)

    def compute(
        self,
        model: nn.Module,
        batches: Iterable[Batch] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> ScoreDict:
        """Score every conv filter of ``model``, keep the scores in ``self.scores`` and bind them.

        ``input_size`` is the (height, width) the model is fed; ``batches`` is required when
        ``needs_data``. The model is put in eval mode for the computation and restored after.
        """
        if self.needs_data and batches is None:
            raise io.UserError(f"criterion '{self.name}' needs data batches")
        with eval_mode(model):
            self.scores = _clean(self._score(model, batches, input_size))
        self.bind(model)
        return self.scores

    def bind(self, model: nn.Module) -> None:
        """Attach ``self.scores`` to the convs of ``model``, which Torch-Pruning's groups refer to.

        Call it before pruning when the scores were given precomputed.
        """
        self._module_scores = {}
        for name, conv in conv_layers(model):
            if name not in self.scores:
                continue
            score = self.scores[name]
            if score.shape != (conv.out_channels,):
                raise io.UserError(
                    f"criterion '{self.name}': {len(score)} scores for '{name}', "
                    f"which has {conv.out_channels} filters (scores of another model?)"
                )
            self._module_scores[conv] = score

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> Tensor:
        """Per channel of the group's root: the mean score of the group's scored conv members."""
        root_positions = {root: pos for pos, root in enumerate(group[0].root_idxs)}
        total = torch.zeros(len(root_positions))
        members = torch.zeros(len(root_positions))
        for item in group:
            score = self._module_scores.get(item.dep.target.module)
            if score is None or not is_conv_out_pruning(item.dep):
                continue
            positions = torch.tensor([root_positions[root] for root in item.root_idxs])
            total.index_add_(0, positions, score[item.idxs])
            members.index_add_(0, positions, torch.ones(len(positions)))
        if not bool((members > 0).all()):
            raise io.UserError(
                f"criterion '{self.name}' has no score for the group rooted at "
                f"{group[0].dep.target.name}; compute or bind the scores for this model first"
            )
        return total / members

    @abc.abstractmethod
    def _score(
        self, model: nn.Module, batches: Iterable[Batch] | None, input_size: tuple[int, int] | None
    ) -> ScoreDict:
        """One score per output filter of every conv, by conv name."""


CRITERIA: dict[str, type[Criterion]] = {}

CriterionClass = TypeVar("CriterionClass", bound=type[Criterion])


def register(cls: CriterionClass) -> CriterionClass:
    """Class decorator: make the criterion available by its ``name``."""
    CRITERIA[cls.name] = cls
    return cls


def get_criterion(name: str, **kwargs: Any) -> Criterion:
    """An instance of the criterion called ``name``; keyword arguments go to its constructor
    (``scores`` for all; ``seed`` for ``random``; the :func:`criterion_options` of each)."""
    options = inspect.signature(_criterion_class(name)).parameters
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise io.UserError(f"criterion '{name}' has no option {', '.join(unknown)}; it takes {', '.join(options)}")
    return CRITERIA[name](**kwargs)


def criterion_from_params(
    name: str, options: Mapping[str, str], seed: int, scores: Mapping[str, Tensor] | None = None
) -> Criterion:
    """The criterion ``name`` built by its own :meth:`Criterion.from_params`."""
    return _criterion_class(name).from_params(options, seed, scores)


def criterion_options(name: str) -> dict[str, tuple[str, ...]]:
    """The options the criterion ``name`` declares, each with its allowed values (first = default),
    so that a caller can validate a params section before any work; ``{}`` for one without."""
    return dict(_criterion_class(name).OPTIONS)


def _criterion_class(name: str) -> type[Criterion]:
    if name not in CRITERIA:
        raise io.UserError(f"unknown criterion '{name}'; valid: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


# --------------------------------------------------------------------------- data-free criteria


@register
class L1Criterion(Criterion):
    """L1 norm of each filter's weights (Li et al. 2017, "Pruning Filters for Efficient ConvNets")."""

    name = "l1"
    needs_data = False

    def _score(self, model, batches, input_size) -> ScoreDict:
        return {name: conv.weight.detach().abs().flatten(1).sum(1) for name, conv in conv_layers(model)}


@register
class BNScaleCriterion(Criterion):
    """|gamma| of the BatchNorm fed by the conv (Liu et al. 2017, Network Slimming).

    The BN is the one :func:`mapex.statistics.activation_taps` finds as the conv's only consumer.
    A conv without one (or with a BN without affine weights) is an error, not a silent fallback
    to another criterion: |gamma| and weight norms on one scale would make a meaningless ranking.
    """

    name = "bn-scale"
    needs_data = False

    def _score(self, model, batches, input_size) -> ScoreDict:
        modules = dict(model.named_modules())
        followers = {name: modules[tap.module] for name, tap in statistics.activation_taps(model).items()}
        batchnorms = {name: bn for name, bn in followers.items() if isinstance(bn, nn.BatchNorm2d) and bn.affine}
        missing = [name for name, _ in conv_layers(model) if name not in batchnorms]
        if missing:
            raise io.UserError(f"criterion 'bn-scale': no affine BatchNorm follows {', '.join(missing)}")
        return {name: bn.weight.detach().abs() for name, bn in batchnorms.items()}


@register
class RandomCriterion(Criterion):
    """Uniform random scores in [0, 1), reproducible from ``seed`` (convs drawn in module order)."""

    name = "random"
    needs_data = False

    def __init__(self, scores: Mapping[str, Tensor] | None = None, seed: int = 0) -> None:
        super().__init__(scores)
        self.seed = seed

    @classmethod
    def from_params(
        cls, options: Mapping[str, str], seed: int, scores: Mapping[str, Tensor] | None = None
    ) -> Criterion:
        return get_criterion(cls.name, scores=scores, seed=seed, **options)

    def _score(self, model, batches, input_size) -> ScoreDict:
        generator = torch.Generator().manual_seed(self.seed)
        return {name: torch.rand(conv.out_channels, generator=generator) for name, conv in conv_layers(model)}


# --------------------------------------------------------------------------- data-driven criteria


class _ResponseCriterion(Criterion):
    """Foreground against background response per filter (SPEC), by :func:`mapex.statistics.filter_scores`
    with ``method = name``; ``score`` and ``tap`` are the SPEC's variants."""

    needs_data = True
    OPTIONS = {"score": statistics.SCORES, "tap": statistics.TAPS}

    def __init__(self, scores: Mapping[str, Tensor] | None, **options: str) -> None:
        """``options``: every option of ``OPTIONS``; a subclass without ``field`` gets ``theoretical``."""
        super().__init__(scores)
        self._check_options(**options)
        self.score, self.tap = options["score"], options["tap"]
        self.field = options.get("field", statistics.FIELDS[0])
        statistics.check_variant(self.name, self.score, self.tap, self.field)

    def _score(self, model, batches, input_size) -> ScoreDict:
        return statistics.filter_scores(
            model, batches, method=self.name, score=self.score, input_size=input_size, tap=self.tap, field=self.field
        )


@register
class MapExCriterion(_ResponseCriterion):
    """Map-EX: boxes mapped to units with receptive-field expansion, under the ``theoretical``
    receptive field or the measured ``effective`` one (SPEC)."""

    name = "map-ex"
    OPTIONS = {**_ResponseCriterion.OPTIONS, "field": statistics.FIELDS}

    def __init__(
        self,
        scores: Mapping[str, Tensor] | None = None,
        score: str = "diff",
        tap: str = "consumed",
        field: str = "theoretical",
    ) -> None:
        super().__init__(scores, score=score, tap=tap, field=field)


@register
class MapCriterion(_ResponseCriterion):
    """The ablation of Map-EX: boxes mapped to units by stride only (no receptive-field expansion)."""

    name = "map"

    def __init__(self, scores: Mapping[str, Tensor] | None = None, score: str = "diff", tap: str = "consumed") -> None:
        super().__init__(scores, score=score, tap=tap)


class _ActivationCriterion(Criterion):
    """A running per-channel mean of a statistic of each conv's consumed activation."""

    needs_data = True

    def _score(self, model, batches, input_size) -> ScoreDict:
        means = _RunningMeans()

        def on_activation(name: str, activation: Tensor) -> None:
            means.add(name, *self._summarise(activation))

        with torch.no_grad(), statistics.tap_activations(model, on_activation):
            for batch in batches:
                model(_images(batch, model))
        return means.result()

    @abc.abstractmethod
    def _summarise(self, activation: Tensor) -> tuple[Tensor, int]:
        """For an activation ``[B, C, h, w]``: a per-channel sum and how many items it sums."""


@register
class APoZCriterion(_ActivationCriterion):
    """1 − APoZ, the fraction of non-zero units (Hu et al. 2016, "Network Trimming").

    A unit counts as zero when it is ``<= 0``, i.e. the zeros of ``relu(activation)``: identical to
    APoZ where the tap is a ReLU output, and the zeros a ReLU would make where it is not (e.g. the
    last conv of a ResNet block, tapped at its BN output before the residual add).
    """

    name = "apoz"

    def _summarise(self, activation: Tensor) -> tuple[Tensor, int]:
        batch, _, height, width = activation.shape
        return (activation > 0).sum(dim=(0, 2, 3)).double(), batch * height * width


@register
class HRankCriterion(_ActivationCriterion):
    """Mean rank of each filter's h×w feature map over images (Lin et al. 2020, HRank);
    ``torch.linalg.matrix_rank`` with its default tolerance, in float64."""

    name = "hrank"

    def _summarise(self, activation: Tensor) -> tuple[Tensor, int]:
        ranks = torch.linalg.matrix_rank(activation.detach().double())
        return ranks.sum(dim=0).double(), activation.shape[0]


@register
class TaylorCriterion(Criterion):
    """First-order Taylor importance (Molchanov et al. 2019), per image, at the BN output.

    For image ``i`` and filter ``c``, with ``Z`` the output of the BN that follows the conv (the
    conv output where there is none; the paper's gate position) and ``L_i`` the cross-entropy of
    the image's label: ``(Σ_{y,x} Z[c,y,x] · ∂L_i/∂Z[c,y,x])²``, the squared first-order change in
    loss when the filter's output is zeroed; the score is its mean over images. In eval mode the
    images of a batch are independent, so one backward pass of the summed loss gives every
    image's gradients. After a ReLU the sum would be the same, as ReLU passes no gradient where
    it zeroes. Parameters' ``.grad`` are left untouched.
    """

    name = "taylor"
    needs_data = True

    def _score(self, model, batches, input_size) -> ScoreDict:
        taps = {name: tap.module for name, tap in statistics.activation_taps(model).items()}
        means = _RunningMeans()
        for batch in batches:
            # The input requires grad so that activations do even where parameters are frozen.
            images = _images(batch, model).detach().requires_grad_(True)
            labels = _labels(batch, model)
            with torch.enable_grad(), statistics.kept_outputs(model, taps) as outputs:
                loss = F.cross_entropy(model(images), labels, reduction="sum")
            # A filter whose output never reaches the loss has no gradient: its score is 0.
            gradients = torch.autograd.grad(loss, list(outputs.values()), allow_unused=True, materialize_grads=True)
            for (name, output), gradient in zip(outputs.items(), gradients):
                per_image = (output.detach() * gradient).sum(dim=(2, 3)).double().pow(2)
                means.add(name, per_image.sum(dim=0), len(per_image))
        return means.result()


# --------------------------------------------------------------------------- helpers


class _RunningMeans:
    """Per-name running sums and item counts; memory independent of how many items are added."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, total: Tensor, count: int) -> None:
        total = total.detach().cpu()
        self._sums[name] = self._sums[name] + total if name in self._sums else total
        self._counts[name] = self._counts.get(name, 0) + count

    def result(self) -> ScoreDict:
        if not self._sums:
            raise io.UserError("no data batches to compute the scores from")
        return {name: total / self._counts[name] for name, total in self._sums.items()}


def _clean(scores: Mapping[str, Tensor]) -> ScoreDict:
    """Scores as float32 CPU tensors, detached (they are kept, saved, and compared)."""
    return {name: torch.as_tensor(s).detach().to("cpu", torch.float32) for name, s in scores.items()}


def _images(batch: Batch, model: nn.Module) -> Tensor:
    return batch[0].to(device_of(model))


def _labels(batch: Batch, model: nn.Module) -> Tensor:
    if len(batch) < 3:
        raise io.UserError("this criterion needs labelled batches: (images, labels, boxes)")
    return torch.as_tensor(batch[1]).to(device_of(model))
