import pytest
import torch
from torch import nn

from dcgan.config import ModelParams
from dcgan.models import Discriminator, Generator, build_models


def _layers(net: nn.Module) -> list[tuple]:
    """Each layer as (kind, in, out, kernel, stride, padding, bias) or (kind,) / (kind, slope)."""
    out = []
    for m in net.main:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            out.append(
                (
                    type(m).__name__,
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size[0],
                    m.stride[0],
                    m.padding[0],
                    m.bias is not None,
                )
            )
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("BatchNorm2d", m.num_features))
        elif isinstance(m, nn.LeakyReLU):
            out.append(("LeakyReLU", m.negative_slope))
        else:
            out.append((type(m).__name__,))
    return out


def test_generator_is_the_seed():
    assert _layers(Generator(z_dim=100, width=64, image_size=64)) == [
        ("ConvTranspose2d", 100, 512, 4, 1, 0, False), ("BatchNorm2d", 512), ("ReLU",),
        ("ConvTranspose2d", 512, 256, 4, 2, 1, False), ("BatchNorm2d", 256), ("ReLU",),
        ("ConvTranspose2d", 256, 128, 4, 2, 1, False), ("BatchNorm2d", 128), ("ReLU",),
        ("ConvTranspose2d", 128, 64, 4, 2, 1, False), ("BatchNorm2d", 64), ("ReLU",),
        ("ConvTranspose2d", 64, 1, 4, 2, 1, False), ("Tanh",),
    ]  # fmt: skip


def test_discriminator_is_the_seed():
    assert _layers(Discriminator(width=64, image_size=64, leaky_slope=0.2)) == [
        ("Conv2d", 1, 64, 4, 2, 1, False), ("LeakyReLU", 0.2),
        ("Conv2d", 64, 128, 4, 2, 1, False), ("BatchNorm2d", 128), ("LeakyReLU", 0.2),
        ("Conv2d", 128, 256, 4, 2, 1, False), ("BatchNorm2d", 256), ("LeakyReLU", 0.2),
        ("Conv2d", 256, 512, 4, 2, 1, False), ("BatchNorm2d", 512), ("LeakyReLU", 0.2),
        ("Conv2d", 512, 1, 4, 1, 0, False),
    ]  # fmt: skip


def test_no_pooling_and_no_linear_layers():
    g, d = build_models(ModelParams(), 64, 1)
    kinds = {type(m) for net in (g, d) for m in net.modules()}
    assert not kinds & {nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d}


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_shapes_at_every_supported_size(size: int):
    g, d = build_models(ModelParams(z_dim=10, g_width=4, d_width=4), size, 1)
    images = g(torch.randn(3, 10, 1, 1))
    assert images.shape == (3, 1, size, size)
    assert images.abs().max() <= 1  # Tanh
    logits = d(images)
    assert logits.shape == (3,)
    probability = d.probability(images)
    assert torch.allclose(probability, torch.sigmoid(logits)) and ((probability > 0) & (probability < 1)).all()


def test_init_follows_the_paper():
    torch.manual_seed(0)
    g, d = build_models(ModelParams(init_std=0.02), 64, 1)
    convs = [m.weight for net in (g, d) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([w.flatten() for w in convs])
    assert abs(weights.mean().item()) < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.02)
    bns = [m for net in (g, d) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    scale = torch.cat([m.weight.flatten() for m in bns])
    assert scale.mean().item() == pytest.approx(1.0, abs=0.01) and scale.std().item() == pytest.approx(0.02, rel=0.1)
    assert all((m.bias == 0).all() for m in bns)


def test_weights_of_another_architecture_are_refused(tmp_path):
    from dcgan.errors import CheckpointError
    from dcgan.models import load_generator
    from dcgan.tensors import save_tensors

    save_tensors(Generator(z_dim=10, width=4, image_size=16).state_dict(), tmp_path / "g.safetensors", {})
    with pytest.raises(CheckpointError, match=r"g.safetensors: does not fit this Generator \(other params\?\)"):
        load_generator(tmp_path / "g.safetensors", ModelParams(z_dim=10, g_width=8), 16, 1)
    with pytest.raises(CheckpointError, match=r"missing.safetensors: missing: run `dcgan train` first"):
        load_generator(tmp_path / "missing.safetensors", ModelParams(), 64, 1)
