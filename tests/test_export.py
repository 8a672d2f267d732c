"""ONNX export: ONNX Runtime computes what PyTorch computes, at any batch size; the CLI's errors are one line."""

import subprocess

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from conftest import REPO
from mapex.criteria import get_criterion
from mapex.export import INPUT_NAME, OPSET, export_onnx
from mapex.models import build_model
from mapex.prune import prune_model, save_pruned


def _pruned_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", 20)
    criterion = get_criterion("l1")
    criterion.compute(model)
    prune_model(model, criterion, 0.5, torch.zeros(1, 3, 64, 64), round_to=8)
    return model


def _ort_logits(path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: images.numpy()})[0]


@pytest.mark.parametrize(
    "build", [lambda: build_model("tiny-cnn", 3, stem="small"), _pruned_resnet18], ids=["tiny-cnn", "pruned-resnet18"]
)
def test_onnx_runtime_gives_pytorchs_logits_at_any_batch_size(tmp_path, build):
    model = build().train()  # exported in eval mode whatever the caller's mode
    path = export_onnx(model, tmp_path / "model.onnx", 64)
    assert model.training
    assert {(o.domain, o.version) for o in onnx.load(path).opset_import} >= {("", OPSET)}
    model.eval()
    for batch in (1, 5):
        images = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            expected = model(images).numpy()
        np.testing.assert_allclose(_ort_logits(path, images), expected, atol=1e-4, rtol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_on_a_gpu_is_exported_from_a_cpu_copy(tmp_path):
    model = _pruned_resnet18()
    on_cpu = export_onnx(model, tmp_path / "cpu.onnx", 64)
    model.cuda().train()
    on_gpu = export_onnx(model, tmp_path / "gpu.onnx", 64)
    assert next(model.parameters()).is_cuda and model.training  # the caller's model is left as it was
    assert on_gpu.read_bytes() == on_cpu.read_bytes()  # the same file wherever the model was trained


def test_cli_export_writes_an_onnx_file_of_the_pruned_model(tmp_path):
    model = build_model("tiny-cnn", 3, stem="small").eval()
    save_pruned(model, tmp_path / "pruned.pt", {"arch": "tiny-cnn"})
    out = tmp_path / "onnx" / "model.onnx"
    subprocess.run(
        [
            "mapex",
            "export",
            "--model",
            str(tmp_path / "pruned.pt"),
            "--out",
            str(out),
            "--params",
            str(REPO / "config/ci.yaml"),
        ],
        check=True,
        capture_output=True,
    )
    images = torch.randn(2, 3, 64, 64)
    np.testing.assert_allclose(_ort_logits(out, images), model(images).detach().numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["missing-model", "out-under-a-file"])
def test_cli_export_errors_are_one_line_naming_the_path(tmp_path, case):
    model_path, out = tmp_path / "pruned.pt", tmp_path / "model.onnx"
    if case == "missing-model":
        named = model_path
    else:
        save_pruned(build_model("tiny-cnn", 3, stem="small"), model_path, {"arch": "tiny-cnn"})
        (tmp_path / "file").write_text("")
        out = named = tmp_path / "file" / "model.onnx"
    result = subprocess.run(
        ["mapex", "export", "--model", str(model_path), "--out", str(out), "--params", str(REPO / "config/ci.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(named) in lines[0] and "Traceback" not in result.stderr
