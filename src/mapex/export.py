"""ONNX export of a (pruned) model, for ONNX Runtime and other deployment runtimes.

The file has one input, ``images`` (float32, N x C x H x W), and one output, ``logits`` (N x
classes); the batch axis ``N`` is dynamic, H and W are fixed at the params' image size. It is
written by torch.onnx's torch.export-based exporter (``dynamo=True``; the TorchScript exporter is
deprecated) at ONNX opset :data:`OPSET` — 18 is the exporter's native opset, run by ONNX Runtime
1.14 and later — with the weights inside the one ``.onnx`` file. The model is exported in eval
mode, BatchNorm included as it is: runtimes fold it into the convs themselves. A model on a GPU is
exported from a CPU copy: the file is then the same wherever the model was trained, and the exporter
(torch 2.11) otherwise logs a failed shape guard on a GPU (the batch of CUDA's convolutions ≤ 65535).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from torch import nn

from mapex.io import UserError, atomic_path
from mapex.models import InputSize, device_of, eval_mode, example_input

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
_TRACE_BATCH = 2  # torch.export specialises a dimension of size 1, so the example batch must be larger
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir")  # an INFO line per graph pass otherwise lands in the stage's log


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: InputSize) -> Path:
    """Write ``model`` to ``path`` as ONNX (see the module doc), atomically; return ``path``."""
    path = Path(path)
    model = _on_cpu(model)
    example = example_input(model, _TRACE_BATCH, input_size)
    batch = torch.export.Dim("batch")
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with eval_mode(model), atomic_path(path, suffix=".onnx") as tmp:
            torch.onnx.export(
                model,
                (example,),
                tmp,
                dynamo=True,
                opset_version=OPSET,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except OSError as err:
        raise UserError(f"{path}: cannot write the ONNX file ({err.strerror or err})") from err
    return path


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself if it is on the CPU; else a CPU copy (the caller's model stays where it is)."""
    if device_of(model).type == "cpu":
        return model
    return copy.deepcopy(model).cpu()
