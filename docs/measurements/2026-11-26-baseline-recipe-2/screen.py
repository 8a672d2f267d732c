"""Screening trainings for #11's recipe: env MAPEX_PAD (crop padding), MAPEX_ZERO (zero-init residual
BN gammas + no weight decay on norm weights and biases). Then runs `mapex train` with argv."""
import os, sys
import torch
from torch import nn

import mapex.data.dataset as dataset
import mapex.data.transforms as transforms
import mapex.models as models
import mapex.stages as stages
import mapex.train as train

pad = int(os.environ.get("MAPEX_PAD", "4"))
def train_transform(size):
    return transforms.BatchTransform(size, padding=pad, flip=True)
dataset.train_transform = train_transform

if os.environ.get("MAPEX_ZERO") == "1":
    from torchvision.models.resnet import BasicBlock
    original = models.build_model
    def build_model(*a, **k):
        model = original(*a, **k)
        for m in model.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
        return model
    models.build_model = build_model
    def make_optimizer(model, config):
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        return torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}],
                               lr=config.lr, momentum=config.momentum, nesterov=True)
    train._make_optimizer = make_optimizer

from mapex.cli import main
sys.exit(main(sys.argv[1:]))
