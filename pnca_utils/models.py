"""Embedding networks: a backbone's feature map, global pooling, optional LayerNorm, a linear embedding."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import ConfigError


class SmallCNN(nn.Module):
    """Four conv blocks (conv-BN-ReLU ×2, then 2×2 max-pool except after the last); returns a feature map."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def colour_from_grey(state: dict) -> dict:
    """A greyscale small CNN's weights for colour images, which it then sees as their grey level.

    The greyscale network was pretrained on u = (g - 0.5) / 0.5, g the grey level; colour images
    arrive normalised with ImageNet's statistics, z_c = (x_c - m_c) / s_c. With g the mean of the
    three channels, u = sum_c (2 s_c / 3) z_c + k, k = (2/3) sum_c m_c - 1. So the first convolution
    takes the weights w * 2 s_c / 3 on channel c, and its first BatchNorm's running mean moves by
    k * (sum of w), the constant the convolution no longer adds (exact away from the zero padding).
    """
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

    state = dict(state)
    w = state["body.0.weight"]
    if w.shape[1] != 1:
        raise ValueError(f"expected a 1-channel first convolution, got {w.shape[1]} channels")
    scale = torch.tensor([2 * s / 3 for s in IMAGENET_STD], dtype=w.dtype).view(1, 3, 1, 1)
    state["body.0.weight"] = w * scale
    k = 2 / 3 * sum(IMAGENET_MEAN) - 1
    state["body.1.running_mean"] = state["body.1.running_mean"] - k * w.sum(dim=(1, 2, 3))
    return state


# torchvision's names for its ImageNet weights, downloaded into torch's cache (hash checked) on first use
TORCHVISION_WEIGHTS = ("IMAGENET1K_V1", "IMAGENET1K_V2")
RESNET_WIDTHS = {"resnet18": 512, "resnet50": 2048}  # channels of the last conv block


def _torchvision_state(arch: str, name: str) -> dict:
    """The state dict torchvision publishes as `name` for `arch`: from torch's cache, else downloaded."""
    from urllib.error import URLError

    from torch.hub import get_dir
    from torchvision.models import get_model_weights

    options = get_model_weights(arch)
    if name not in options.__members__:
        raise ConfigError(f"torchvision has no {name} weights for {arch}; it has {', '.join(options.__members__)}")
    weights = options[name]
    cached = Path(get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, RuntimeError) as err:
        raise ConfigError(f"{arch} weights {name} are not in torch's cache and could not be downloaded "
                          f"({type(err).__name__}). Put {weights.url} at {cached} (or set TORCH_HOME), or give "
                          "weights the path of a local state dict") from err


def _local_state(path: str | Path, arch: str) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{arch} weights not found at {path}. Give torchvision's weight name ({' or '.join(TORCHVISION_WEIGHTS)}), "
            f"or put torchvision's {arch} ImageNet state dict (e.g. resnet50-0676ba61.pth) there, or pass no weights.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file
        raise ConfigError(f"{path} is not a torchvision {_title(arch)} state dict ({_first_line(err)}); use the "
                          f"file torchvision saves for {arch} ImageNet weights, e.g. resnet50-0676ba61.pth") from err


def _title(arch: str) -> str:
    return "ResNet-" + arch.removeprefix("resnet")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def resnet_backbone(weights: str | Path | None = None, arch: str = "resnet50") -> nn.Module:
    """A torchvision ResNet up to its last conv block. `weights`: torchvision's name (IMAGENET1K_V1 or _V2),
    the path of a local state dict, or None (random)."""
    from torchvision import models as tv

    net = getattr(tv, arch)(weights=None)
    if weights is not None:
        state = _torchvision_state(arch, str(weights)) if str(weights) in TORCHVISION_WEIGHTS else \
            _local_state(weights, arch)
        try:
            net.load_state_dict(state)
        except Exception as err:  # the state dict of another network
            raise ConfigError(f"{weights} is not a torchvision {_title(arch)} state dict ({_first_line(err)}); use "
                              f"the file torchvision saves for {arch} ImageNet weights") from err
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    body.out_channels = RESNET_WIDTHS[arch]
    return body


class EmbeddingNet(nn.Module):
    """backbone → global max/avg pooling → LayerNorm without affine (optional) → linear embedding.

    Convolutions run channels-last (NHWC): on a CPU this halves the small CNN's inference time and
    cuts a fifth off its training step; on a GPU it is the layout mixed precision is fastest in.
    """

    def __init__(self, backbone: nn.Module, embedding_dim: int, pooling: str = "max", layernorm: bool = True):
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', not {pooling!r}")
        self.backbone, self.pooling = backbone, pooling
        width = backbone.out_channels
        self.norm = nn.LayerNorm(width, elementwise_affine=False) if layernorm else nn.Identity()
        self.embedding = nn.Linear(width, embedding_dim)
        self.to(memory_format=torch.channels_last)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.amax(dim=(2, 3)) if self.pooling == "max" else fmap.mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled (and normalised) backbone features: the space HDML's generator maps back to."""
        return self.norm(self.pool(self.backbone(x.contiguous(memory_format=torch.channels_last))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(x))


def build_model(arch: str, in_channels: int, embedding_dim: int, pooling: str, layernorm: bool,
                weights: str | Path | None = None) -> EmbeddingNet:
    """An EmbeddingNet on 'small_cnn' (weights: a pretrained backbone state dict), 'resnet18' or 'resnet50'."""
    if arch == "small_cnn":
        backbone = SmallCNN(in_channels)
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            if in_channels == 3 and state["body.0.weight"].shape[1] == 1:
                state = colour_from_grey(state)
            backbone.load_state_dict(state)
    elif arch in RESNET_WIDTHS:
        if in_channels != 3:
            raise ValueError(f"{arch} needs 3-channel images, the data set has {in_channels}")
        backbone = resnet_backbone(weights, arch)
    else:
        raise ValueError(f"unknown model {arch!r}; choose 'small_cnn', {', '.join(map(repr, RESNET_WIDTHS))}")
    return EmbeddingNet(backbone, embedding_dim, pooling, layernorm)
