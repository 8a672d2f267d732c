import contextlib
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.io import write_png

import mapex.train
from mapex.data import BoxIndex, BoxSample, make_loader
from mapex.io import UserError, load_torch
from mapex.train import FitResult, TrainConfig, fit

CLASSES, SAMPLES, SIDE = 4, 96, 8
CPU = torch.device("cpu")


class NoisyBlobs(Dataset):
    """Class-dependent patterns plus per-read noise from the global RNG (as random augmentation draws).

    ``kill_after`` reads, it raises ``KeyboardInterrupt``: a run killed part-way through an epoch.
    """

    def __init__(self, kill_after: int | None = None) -> None:
        generator = torch.Generator().manual_seed(123)
        self.centres = torch.randn(CLASSES, 3, SIDE, SIDE, generator=generator)
        self.labels = torch.arange(SAMPLES) % CLASSES
        self.reads_left = kill_after

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int):
        if self.reads_left is not None:
            if self.reads_left == 0:
                raise KeyboardInterrupt("killed")
            self.reads_left -= 1
        label = self.labels[index]
        image = self.centres[label] + 0.8 * torch.randn(3, SIDE, SIDE)
        return image, label, torch.tensor([[0.0, 0.0, SIDE, SIDE]])


def _loaders(kill_after: int | None = None) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(NoisyBlobs(kill_after), batch_size=16, shuffle=True, generator=torch.Generator())
    val = DataLoader(NoisyBlobs(), batch_size=32)
    return train, val


def _model(init_seed: int = 0) -> nn.Module:
    torch.manual_seed(init_seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )


def _config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=3, batch_size=16, lr=0.1, weight_decay=5e-4, momentum=0.9, label_smoothing=0.1, seed=7)
    return dataclasses.replace(base, **changes)


def _fit(checkpoint_dir, model=None, kill_after=None, **changes) -> FitResult:
    train, val = _loaders(kill_after)
    return fit(model or _model(), train, val, _config(**changes), checkpoint_dir, CPU, progress=False)


def _without_seconds(history):
    return [{key: value for key, value in row.items() if key != "seconds"} for row in history]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_loss_decreases_and_history_has_every_field(tmp_path):
    result = _fit(tmp_path, epochs=4)
    history = result.history
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert set(history[0]) == {"epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "seconds"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_top1"] > 0.5  # chance is 0.25
    best = max(row["val_top1"] for row in history)
    assert result.best_epoch == max(row["epoch"] for row in history if row["val_top1"] == best)
    assert (tmp_path / "last.pt").is_file()


def test_the_returned_model_holds_the_best_weights(tmp_path):
    model = _model()
    result = _fit(tmp_path, model=model)
    _assert_same_weights(model.state_dict(), result.best_state)


def test_same_seed_gives_identical_history_and_weights(tmp_path):
    first, second = _fit(tmp_path / "a"), _fit(tmp_path / "b")
    assert _without_seconds(first.history) == _without_seconds(second.history)
    _assert_same_weights(first.best_state, second.best_state)
    other_seed = _fit(tmp_path / "c", seed=8)
    assert _without_seconds(other_seed.history) != _without_seconds(first.history)


@pytest.mark.parametrize(
    "killed_in_epoch, changes",
    [(2, {}), (3, {}), (2, {"epoch_sizes": [4, 6]}), (2, {"validate_last": 1}), (3, {"validate_last": 2})],
)
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, killed_in_epoch, changes):
    uninterrupted = _fit(tmp_path / "whole", **changes)
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _fit(resumed_dir, kill_after=(killed_in_epoch - 1) * SAMPLES + 20, **changes)
    assert len(load_torch(resumed_dir / "last.pt")["history"]) == killed_in_epoch - 1
    # A new process would build the model afresh, with another initialisation: the checkpoint wins.
    resumed = _fit(resumed_dir, model=_model(init_seed=99), **changes)
    assert _without_seconds(resumed.history) == _without_seconds(uninterrupted.history)
    assert resumed.best_epoch == uninterrupted.best_epoch
    _assert_same_weights(resumed.best_state, uninterrupted.best_state)
    assert torch.equal(
        load_torch(resumed_dir / "last.pt")["model"]["6.weight"],
        load_torch(tmp_path / "whole" / "last.pt")["model"]["6.weight"],
    )


def test_validate_last_validates_the_last_epochs_only_and_changes_nothing_else(tmp_path):
    every = _fit(tmp_path / "every", epochs=4)
    last = _fit(tmp_path / "last", epochs=4, validate_last=2)
    assert [row["val_top1"] is None and row["val_loss"] is None for row in last.history] == [True, True, False, False]
    for all_validated, some_validated in zip(every.history, last.history, strict=True):
        for key in ("train_loss", "train_top1", "lr"):
            assert some_validated[key] == all_validated[key], key
        if some_validated["val_top1"] is not None:
            assert some_validated["val_top1"] == all_validated["val_top1"]
    best = max(row["val_top1"] for row in every.history[2:])
    assert last.best_epoch == max(row["epoch"] for row in every.history[2:] if row["val_top1"] == best)
    only_last = _fit(tmp_path / "only-last", epochs=4, validate_last=1)
    assert only_last.best_epoch == 4
    _assert_same_weights(only_last.best_state, load_torch(tmp_path / "every" / "last.pt")["model"])


def test_validate_last_below_one_is_a_user_error():
    with pytest.raises(UserError, match="validate_last must be at least 1"):
        _config(validate_last=0)


def test_epoch_sizes_resize_the_training_batches_of_the_first_epochs_only(tmp_path):
    seen = []  # (training, side, channels-last) of every forward pass
    model = _model()
    model.register_forward_pre_hook(
        lambda module, args: seen.append(
            (module.training, args[0].shape[-1], args[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    resized = _fit(tmp_path / "resized", model=model, epoch_sizes=[4, 6])
    sides = [side for training, side, _ in seen if training]
    batches = len(sides) // 3
    assert sides == [4] * batches + [6] * batches + [SIDE] * batches
    assert {side for training, side, _ in seen if not training} == {SIDE}
    assert all(channels_last for _, _, channels_last in seen)
    assert _without_seconds(resized.history) != _without_seconds(_fit(tmp_path / "full").history)


def test_a_finished_run_is_not_trained_again(tmp_path):
    first = _fit(tmp_path)
    again = _fit(tmp_path, kill_after=0)  # any read of training data would raise
    assert again.history == first.history
    _assert_same_weights(again.best_state, first.best_state)


def test_resuming_under_another_config_is_refused(tmp_path):
    _fit(tmp_path, epochs=1)
    with pytest.raises(UserError, match="epochs: 1 -> 3"):
        _fit(tmp_path, epochs=3)


class PoisonedAt(nn.Module):
    """Passes ``inner``'s logits through, but makes them NaN at training forward number ``call``."""

    def __init__(self, inner: nn.Module, call: int) -> None:
        super().__init__()
        self.inner, self.call, self.calls = inner, call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.call:
                return logits * float("nan")
        return logits


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    steps_per_epoch = SAMPLES // 16
    clean = _fit(tmp_path / "clean", model=PoisonedAt(_model(), call=-1))
    with pytest.raises(UserError, match=r"non-finite loss at epoch 2 step 3; last good checkpoint kept at .*last\.pt"):
        _fit(tmp_path / "nan", model=PoisonedAt(_model(), call=steps_per_epoch + 3))
    kept = load_torch(tmp_path / "nan" / "last.pt")
    assert _without_seconds(kept["history"]) == _without_seconds(clean.history[:1])
    assert all(torch.isfinite(tensor).all() for tensor in kept["model"].values() if tensor.is_floating_point())


def test_a_non_finite_loss_in_the_first_epoch_says_no_checkpoint_exists(tmp_path):
    with pytest.raises(UserError, match="epoch 1 step 1; no checkpoint was written yet"):
        _fit(tmp_path, model=PoisonedAt(_model(), call=1))


def test_amp_autocasts_the_forward_pass_and_the_loss_only(tmp_path, monkeypatch):
    """Autocast over the backward pass and the optimiser step too left ResNet-18 at chance (bf16, H100)."""
    depth = []

    @contextlib.contextmanager
    def recording_autocast(device, enabled, training=False):
        depth.append(enabled)
        try:
            yield
        finally:
            depth.pop()

    seen = {"forward": [], "loss": [], "backward": [], "step": []}
    sgd_step = torch.optim.SGD.step

    def recorded_step(self, *args, **kwargs):
        seen["step"].append(bool(depth))
        return sgd_step(self, *args, **kwargs)

    class RecordedLoss(nn.CrossEntropyLoss):
        def forward(self, logits, labels):
            seen["loss"].append(depth == [True])
            return super().forward(logits, labels)

    monkeypatch.setattr(mapex.train, "autocast", recording_autocast)
    monkeypatch.setattr(mapex.train.nn, "CrossEntropyLoss", RecordedLoss)
    monkeypatch.setattr(torch.optim.SGD, "step", recorded_step)
    model = _model()
    model.register_forward_pre_hook(lambda module, args: seen["forward"].append(depth == [True]))
    for parameter in model.parameters():
        parameter.register_hook(lambda grad: seen["backward"].append(bool(depth)))
    _fit(tmp_path, model=model, epochs=1, amp=True)
    assert seen["forward"] and all(seen["forward"])  # training and validation batches, under autocast(amp=True)
    assert seen["loss"] and all(seen["loss"])
    assert seen["backward"] and not any(seen["backward"])
    assert seen["step"] and not any(seen["step"])


def test_max_steps_per_epoch_caps_the_batches(tmp_path):
    model = PoisonedAt(_model(), call=-1)
    _fit(tmp_path, model=model, epochs=2, max_steps_per_epoch=2)
    assert model.calls == 4


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="onecycle, cosine"):
        _config(schedule="step")


def test_cosine_schedule_ends_near_zero(tmp_path):
    result = _fit(tmp_path, schedule="cosine", epochs=2)
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)


class KilledAt(nn.Module):
    """Passes ``inner``'s logits through, but raises ``KeyboardInterrupt`` at training forward number ``call``."""

    def __init__(self, inner: nn.Module, call: int) -> None:
        super().__init__()
        self.inner, self.call, self.calls = inner, call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.call:
                raise KeyboardInterrupt("killed")
        return self.inner(x)


def _noise_index(folder) -> BoxIndex:
    """24 noise PNGs of 16x16 (every crop and flip changes the input), CLASSES classes, one box each."""
    generator = torch.Generator().manual_seed(5)
    samples = []
    for k in range(24):
        path = folder / f"img{k}.png"
        write_png(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=generator), str(path))
        samples.append(BoxSample(path, k % CLASSES, ((2.0, 2.0, 12.0, 12.0),)))
    return BoxIndex([str(c) for c in range(CLASSES)], samples)


def test_resume_is_exact_with_the_projects_augmenting_loader(tmp_path):
    index = _noise_index(tmp_path)

    def fit_on(checkpoint_dir, model):
        train = make_loader(index, 16, train=True, batch_size=8, seed=7, cache=True)
        val = make_loader(index, 16, train=False, batch_size=8, seed=7, cache=True)
        return fit(model, train, val, _config(batch_size=8), checkpoint_dir, CPU, progress=False)

    uninterrupted = fit_on(tmp_path / "whole", KilledAt(_model(), call=-1))
    with pytest.raises(KeyboardInterrupt):
        fit_on(tmp_path / "resumed", KilledAt(_model(), call=3 + 2))  # 3 steps an epoch: killed in epoch 2
    resumed = fit_on(tmp_path / "resumed", KilledAt(_model(init_seed=99), call=-1))
    assert _without_seconds(resumed.history) == _without_seconds(uninterrupted.history)
    _assert_same_weights(resumed.best_state, uninterrupted.best_state)
    assert torch.equal(
        load_torch(tmp_path / "resumed" / "last.pt")["model"]["inner.6.weight"],
        load_torch(tmp_path / "whole" / "last.pt")["model"]["inner.6.weight"],
    )


def test_norm_weight_decay_applies_to_the_1d_parameters_only():
    """Zero gradients: each parameter moves by its weight decay alone."""
    model = _model()
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    optimizer = mapex.train._make_optimizer(model, _config(norm_weight_decay=0.0))
    (0 * model(torch.randn(2, 3, SIDE, SIDE)).sum()).backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        moved = not torch.equal(parameter, before[name])
        assert moved == (parameter.ndim > 1), name  # the conv and linear weights decay; BN and biases do not


def test_without_norm_weight_decay_every_parameter_decays():
    model = _model()
    optimizer = mapex.train._make_optimizer(model, _config())
    assert [group["weight_decay"] for group in optimizer.param_groups] == [5e-4]
    assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))
