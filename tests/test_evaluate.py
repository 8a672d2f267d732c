import math

import pytest
import torch
import torchvision
from torch import nn

from mapex.criteria import get_criterion
from mapex.evaluate import accuracy, deployed_copy, evaluate_model, file_size, measure_latency
from mapex.io import UserError
from mapex.models import count_macs_and_params
from mapex.prune import prune_model

CPU = torch.device("cpu")


class LookupLogits(nn.Module):
    """Returns the hand-written logits row of each sample: the input holds the sample's row number."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table), requires_grad=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table[rows[:, 0].long()]


def _batches(labels: list[int], batch_size: int = 2) -> list[tuple[torch.Tensor, torch.Tensor, list]]:
    """Loader-shaped batches ``(inputs, labels, boxes)``; input ``i`` selects logits row ``i``."""
    rows = torch.arange(len(labels), dtype=torch.float32)[:, None]
    targets = torch.tensor(labels)
    return [(rows[i : i + batch_size], targets[i : i + batch_size], []) for i in range(0, len(labels), batch_size)]


def test_top1_and_top5_by_hand():
    table = [
        [9, 1, 2, 3, 4, 5],  # label 0 ranked 1st: top-1 and top-5 hit
        [1, 2, 9, 8, 0, 0.5],  # label 3 ranked 2nd: top-5 hit only
        [0, 1, 2, 3, 4, 5],  # label 0 ranked 6th: miss
        [0, 0, 0, 0, 0, 7],  # label 5 ranked 1st
    ]
    result = accuracy(LookupLogits(table), _batches([0, 3, 0, 5]), CPU, progress=False)
    assert result == {"top1": 0.5, "top5": 0.75, "n": 4}


def test_top5_is_top_k_when_there_are_fewer_than_5_classes():
    table = [[3, 2, 1], [3, 2, 1], [1, 2, 3]]  # labels ranked 1st, 3rd, 2nd
    result = accuracy(LookupLogits(table), _batches([0, 2, 1]), CPU, progress=False)
    assert result["top1"] == pytest.approx(1 / 3)
    assert result["top5"] == 1.0


def test_file_size(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x" * 123)
    assert file_size(path) == 123
    with pytest.raises(UserError, match="not found"):
        file_size(tmp_path / "missing.pt")


def _small_convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def test_latency_is_a_positive_finite_number_of_milliseconds():
    latency = measure_latency(_small_convnet(), batch=4, input_size=(16, 16), device=CPU, warmup=1, reps=3)
    assert math.isfinite(latency) and latency > 0


def test_evaluate_model_reports_accuracy_size_and_latencies():
    torch.manual_seed(0)
    model = _small_convnet()
    images = torch.randn(6, 3, 16, 16)
    labels = model(images).argmax(1)  # the model's own predictions: top-1 must be 1
    loader = [(images[:4], labels[:4], []), (images[4:], labels[4:], [])]
    metrics = evaluate_model(model, loader, CPU, (16, 16), latency_batches=(1, 2), latency_reps=2, progress=False)
    assert metrics["top1"] == 1.0 and metrics["top5"] == 1.0 and metrics["n"] == 6
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert (metrics["macs"], metrics["params"]) == count_macs_and_params(model, 16)  # the project's one counter
    for batch in (1, 2):
        assert metrics[f"latency_ms_cpu_b{batch}"] > 0
        assert metrics[f"latency_ms_ort_b{batch}"] > 0
        assert (f"latency_ms_cuda_b{batch}" in metrics) == torch.cuda.is_available()
    assert metrics["cpu_name"] and metrics["cpu_threads"] >= 1


def _resnet18_with_trained_looking_bn() -> nn.Module:
    """ResNet-18 whose BatchNorms have non-trivial statistics and affine terms (freshly built ones are
    the identity in eval mode, which would let a wrong fold pass)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=20)
    generator = torch.Generator().manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.normal_(0.0, 0.2, generator=generator)
        bn.running_var.uniform_(0.5, 2.0, generator=generator)
        bn.weight.data.uniform_(0.5, 1.5, generator=generator)
        bn.bias.data.normal_(0.0, 0.2, generator=generator)
    return model


def _pruned(model: nn.Module, ratio: float) -> nn.Module:
    criterion = get_criterion("l1")
    criterion.compute(model)
    prune_model(model, criterion, ratio, torch.zeros(1, 3, 64, 64), round_to=8)
    return model


@pytest.mark.parametrize("ratio", [None, 0.5])
def test_deployed_copy_folds_every_bn_and_computes_the_same_logits(ratio):
    model = _resnet18_with_trained_looking_bn()
    if ratio is not None:
        model = _pruned(model, ratio)
    model.train()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    deployed = deployed_copy(model, CPU)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20  # left as it was
    with torch.inference_mode():
        expected = model.eval()(images)
        got = deployed(images.contiguous(memory_format=torch.channels_last))
    assert expected.abs().max() > 0.1  # logits well above the tolerance below
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_measure_latency_leaves_the_model_as_it_was():
    model = _small_convnet().train()
    measure_latency(model, batch=2, input_size=8, device=CPU, warmup=0, reps=1)
    assert model.training and model[0].weight.is_contiguous()  # not switched to channels-last


def test_recalibrate_batchnorm_sets_running_statistics_to_the_batches_mean_and_variance():
    from mapex.evaluate import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    batches = [(torch.randn(8, 3, 6, 6) * 3 + 1,) for _ in range(3)]
    model(batches[0][0])  # materialise the lazy layer
    recalibrate_batchnorm(model, batches, torch.device("cpu"))
    with torch.no_grad():
        outputs = torch.cat([model[0](images) for (images,) in batches])
    norm = model[1]
    assert torch.allclose(norm.running_mean, outputs.mean(dim=(0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([model[0](images).var(dim=(0, 2, 3), unbiased=True) for (images,) in batches]).mean(0)
    assert torch.allclose(norm.running_var, per_batch_var.detach(), atol=1e-4)
    assert norm.momentum == 0.1 and not model.training
