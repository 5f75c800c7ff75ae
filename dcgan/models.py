"""DCGAN (Radford, Metz and Chintala, 2015) as in the seed: all-convolutional, no pooling, no linear layers.

At 64 x 64 with width 64 (the seed):

    Generator      z (N, z_dim, 1, 1)
                   ConvT 4/1/0 -> 512 x 4 x 4   BN ReLU
                   ConvT 4/2/1 -> 256 x 8 x 8   BN ReLU
                   ConvT 4/2/1 -> 128 x 16 x 16 BN ReLU
                   ConvT 4/2/1 ->  64 x 32 x 32 BN ReLU
                   ConvT 4/2/1 ->   1 x 64 x 64 Tanh

    Discriminator  x (N, 1, 64, 64)
                   Conv 4/2/1 ->  64 x 32 x 32  LeakyReLU
                   Conv 4/2/1 -> 128 x 16 x 16  BN LeakyReLU
                   Conv 4/2/1 -> 256 x 8 x 8    BN LeakyReLU
                   Conv 4/2/1 -> 512 x 4 x 4    BN LeakyReLU
                   Conv 4/1/0 ->   1 x 1 x 1    (a logit; the seed's Sigmoid moves into BCEWithLogitsLoss)

Other power-of-two sizes add or drop middle layers, doubling the width at each. Colour data sets (CIFAR-10, a
folder of colour images) give both networks 3 image channels in place of 1; nothing else changes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dcgan.config import ModelParams
from dcgan.tensors import load_weights


def _n_middle_layers(image_size: int) -> int:
    # The first layer makes (or the last consumes) 4 x 4; each middle and the outer layer double the size.
    return image_size.bit_length() - 1 - 3


class Generator(nn.Module):
    def __init__(self, z_dim: int, width: int, image_size: int, channels: int = 1):
        super().__init__()
        n_mid = _n_middle_layers(image_size)
        widths = [width * 2**i for i in range(n_mid, -1, -1)]  # seed: 512, 256, 128, 64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)  # N x z_dim x 1 x 1 -> N x C x S x S in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, width: int, image_size: int, leaky_slope: float, channels: int = 1):
        super().__init__()
        n_mid = _n_middle_layers(image_size)
        widths = [width * 2**i for i in range(n_mid + 1)]  # seed: 64, 128, 256, 512
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(leaky_slope, True)]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(leaky_slope, True),
            ]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)  # N x C x S x S -> N logits

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) as the seed defines it: the probability that x is real."""
        return torch.sigmoid(self(x))


def init_weights(module: nn.Module, std: float) -> None:
    """The paper's init: conv weights N(0, std); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, std)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_models(model: ModelParams, image_size: int, channels: int) -> tuple[Generator, Discriminator]:
    """Both networks for images of `channels` (1 grey, 3 colour), freshly initialised from the global torch RNG
    (seed it first)."""
    generator = Generator(model.z_dim, model.g_width, image_size, channels)
    discriminator = Discriminator(model.d_width, image_size, model.leaky_slope, channels)
    for net in (generator, discriminator):
        net.apply(lambda m: init_weights(m, model.init_std))
    return generator, discriminator


def load_generator(path: Path, model: ModelParams, image_size: int, channels: int) -> Generator:
    """The generator saved by `train`, in eval mode; refuses weights of another architecture."""
    generator = Generator(model.z_dim, model.g_width, image_size, channels)
    load_weights(generator, path, "train")
    return generator.eval()


@torch.no_grad()
def sample(generator: Generator, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """G(z) in eval mode (BatchNorm running statistics: the network as exported), in batches on the generator's
    device; N x C x S x S float32 in [-1, 1] on the CPU. The generator's mode is restored."""
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    images = torch.cat([generator(chunk.to(device)).float().cpu() for chunk in z.split(batch)])
    generator.train(was_training)
    return images


@torch.no_grad()
def recalibrate_batchnorm(generator: Generator, batches: int, batch_size: int, seed: int) -> Generator:
    """Recompute BatchNorm's running statistics as the plain average over `batches` latent batches in train mode.

    Training leaves them an exponential average of batches from many past weights; eval mode (and the ONNX
    export) uses them, so samples can look worse than in training. Returns the generator in eval mode.
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms or batches == 0:
        return generator.eval()
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: each batch counts the same
    generator.train()
    for _ in range(batches):
        generator(torch.randn(batch_size, generator.z_dim, 1, 1, generator=rng).to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return generator.eval()
