import functools
import time

import pytest
import torch
import torchvision
from torch import nn

from mapex.io import UserError
from mapex.models import ARCHS, build_model, classifier_name, count_macs_and_params, first_conv_name, restrict_classes


@functools.cache
def _built(arch: str, stem: str) -> nn.Module:
    """Each model once per session (VGG-16 takes seconds to initialise); callers must not modify it."""
    torch.manual_seed(0)
    return build_model(arch, 10, stem=stem).eval()


def _last_feature_map_side(model: nn.Module, arch: str) -> int:
    """Side of the feature map that reaches the global pool, for a 64×64 input."""
    body = model.layer4 if arch.startswith("resnet") else model.features
    shapes = []
    handle = body.register_forward_hook(lambda module, inputs, output: shapes.append(output.shape))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64))
    handle.remove()
    return shapes[0][-1]


@pytest.mark.parametrize("stem", ["imagenet", "small"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_and_stem_classifies_64px_images(arch, stem):
    model = _built(arch, stem)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("arch", "imagenet_side", "small_side"),
    [
        ("resnet18", 2, 8),
        ("resnet34", 2, 8),
        ("mobilenet_v2", 2, 4),
        ("vgg16_bn", 2, 2),
    ],
)
def test_small_stem_keeps_larger_feature_maps(arch, imagenet_side, small_side):
    assert _last_feature_map_side(_built(arch, "imagenet"), arch) == imagenet_side
    assert _last_feature_map_side(_built(arch, "small"), arch) == small_side


def test_small_resnet_stem_is_3x3_stride_1_without_maxpool():
    model = _built("resnet18", "small")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


def test_small_vgg_replaces_the_4096_wide_classifier_by_pool_and_one_linear():
    imagenet, small = _built("vgg16_bn", "imagenet"), _built("vgg16_bn", "small")
    assert isinstance(small.avgpool, nn.AdaptiveAvgPool2d) and small.avgpool.output_size == 1
    assert isinstance(small.classifier, nn.Linear) and small.classifier.in_features == 512
    assert sum(p.numel() for p in imagenet.parameters()) - sum(p.numel() for p in small.parameters()) > 100_000_000


@pytest.mark.parametrize(
    ("arch", "stem", "classifier", "first_conv"),
    [
        ("resnet18", "imagenet", "fc", "conv1"),
        ("vgg16_bn", "imagenet", "classifier.6", "features.0"),
        ("vgg16_bn", "small", "classifier", "features.0"),
        ("mobilenet_v2", "small", "classifier.1", "features.0.0"),
        ("tiny-cnn", "small", "5", "0.0"),
        ("tiny-resnet", "small", "fc", "conv1"),
    ],
)
def test_classifier_and_first_conv_names(arch, stem, classifier, first_conv):
    model = _built(arch, stem)
    assert classifier_name(model) == classifier
    assert first_conv_name(model) == first_conv
    assert isinstance(model.get_submodule(classifier), nn.Linear)
    assert isinstance(model.get_submodule(first_conv), nn.Conv2d)


@pytest.mark.parametrize("arch", ["tiny-resnet", "mobilenet_v2"])
def test_restricted_model_logits_are_the_selected_original_logits(arch):
    torch.manual_seed(0)
    model = build_model(arch, 20, stem="small").eval()
    keep = [17, 3, 0, 9, 12]
    task_model = restrict_classes(model, keep).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        # Equal up to float rounding: a 5-row matrix product may sum in another order than a 20-row one.
        torch.testing.assert_close(task_model(images), model(images)[:, keep], rtol=1e-5, atol=1e-12)
    assert model.get_submodule(classifier_name(model)).out_features == 20  # the original is untouched


@pytest.mark.parametrize("keep", [[], [1, 1], [20], [-1]])
def test_restrict_classes_rejects_bad_indices(keep):
    with pytest.raises(UserError):
        restrict_classes(build_model("tiny-cnn", 20), keep)


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(UserError, match="resnet18, resnet34, vgg16_bn, mobilenet_v2, tiny-cnn"):
        build_model("resnet1000", 10)


def test_unknown_stem_is_a_user_error():
    with pytest.raises(UserError, match="imagenet, small"):
        build_model("resnet18", 10, stem="huge")


def test_pretrained_offline_fails_at_once_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    started = time.perf_counter()
    with pytest.raises(UserError) as error:
        build_model("resnet18", 20, pretrained=True)
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("pretrained weights for resnet18 are not available offline")
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert message.endswith("or set pretrained: false")


def test_pretrained_loads_cached_weights_and_replaces_the_classifier(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), cached)
    # The real loader also checks the file's hash against its name, which a made-up file cannot pass.
    monkeypatch.setattr(
        torchvision.models._api,
        "load_state_dict_from_url",
        lambda url, *args, **kwargs: torch.load(cached.parent / url.rsplit("/", 1)[-1]),
    )
    model = build_model("resnet18", 20, stem="small", pretrained=True)
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.fc.out_features == 20
    assert model.conv1.kernel_size == (3, 3)


def test_a_corrupt_cached_file_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be loaded"):
        build_model("resnet18", 20, pretrained=True)


def test_tiny_nets_have_no_pretrained_weights():
    with pytest.raises(UserError, match="no pretrained weights for tiny-cnn"):
        build_model("tiny-cnn", 5, pretrained=True)


def test_eval_mode_restores_the_training_flag_even_after_an_error():
    from mapex.models import eval_mode

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training and not model[1].training
        raise RuntimeError("inside")
    assert model.training and model[1].training
    with eval_mode(model.eval()):
        pass
    assert not model.training


def test_conv_layers_and_device_of():
    from mapex.models import conv_layers, device_of

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 2, 1)))
    assert [(name, conv.out_channels) for name, conv in conv_layers(model)] == [("0", 4), ("2.0", 2)]
    assert device_of(model) == torch.device("cpu") and device_of(nn.ReLU()) == torch.device("cpu")


def test_macs_of_one_conv_by_hand():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    out_pixels = 10 * 12
    macs, params = count_macs_and_params(conv, (10, 12))
    assert macs == 8 * 3 * 3 * 3 * out_pixels + 8 * out_pixels  # multiply-adds, plus one add per output for the bias
    assert params == 8 * 3 * 3 * 3 + 8


def test_macs_of_a_strided_grouped_conv_bn_relu_pool_and_linear_by_hand():
    model = nn.Sequential(
        nn.Conv2d(4, 8, kernel_size=3, stride=2, padding=1, groups=2, bias=False),  # 16x16 -> 8x8
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    activations = 8 * 8 * 8
    conv, bn, relu, pool, linear = 8 * (4 // 2) * 3 * 3 * 8 * 8, 2 * activations, activations, activations, 8 * 10 + 10
    assert count_macs_and_params(model, 16)[0] == conv + bn + relu + pool + linear


def test_macs_are_counted_once_per_structure_and_again_when_it_changes(monkeypatch):
    import torch_pruning as tp

    calls = []
    counter = tp.utils.count_ops_and_params
    monkeypatch.setattr(tp.utils, "count_ops_and_params", lambda *args: calls.append(1) or counter(*args))

    def conv(stride: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 5, 3, stride=stride, padding=1), nn.ReLU())

    first = count_macs_and_params(conv(1, 0), 12)
    assert count_macs_and_params(conv(1, 1), 12) == first and len(calls) == 1  # other weights, same structure
    assert count_macs_and_params(conv(2, 0), 12)[0] < first[0]  # stride 2: a quarter of the outputs
    assert count_macs_and_params(conv(1, 0), 10)[0] < first[0]  # a smaller image
    assert len(calls) == 3


def test_counting_macs_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    count_macs_and_params(model, 8)
    assert model.training
    assert torch.equal(model[1].running_mean, before)  # counted on an eval-mode copy: BN statistics untouched


def test_schema_architectures_and_stems_are_the_registered_ones():
    from mapex.config import load_schema
    from mapex.models import STEMS

    model = load_schema()["properties"]["model"]["properties"]
    assert model["arch"]["enum"] == list(ARCHS)
    assert model["stem"]["enum"] == list(STEMS)


@pytest.mark.parametrize("arch", ["resnet18", "tiny-resnet"])
def test_zero_init_residual_blocks_start_as_their_shortcut(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5, zero_init_residual=True)
    blocks = [module for module in model.modules() if isinstance(module, torchvision.models.resnet.BasicBlock)]
    assert blocks
    for block in blocks:
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        shortcut = block.downsample(x) if block.downsample is not None else x
        assert torch.equal(block(x), torch.relu(shortcut))
    torch.manual_seed(0)
    plain = build_model(arch, num_classes=5)
    assert all(module.bn2.weight.abs().sum() > 0 for module in plain.modules() if hasattr(module, "bn2"))
