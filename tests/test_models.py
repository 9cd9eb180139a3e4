"""Embedding networks: shapes, pooling, LayerNorm without affine parameters, ResNets without downloads."""
from pathlib import Path

import pytest
import torch
from torch import nn

from pnca_utils.models import EmbeddingNet, SmallCNN, build_model, resnet_backbone


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("layernorm", [True, False])
def test_small_cnn_shapes(pooling, layernorm):
    model = build_model("small_cnn", 1, 24, pooling, layernorm).eval()
    assert model(torch.rand(5, 1, 32, 32)).shape == (5, 24)
    assert model.features(torch.rand(5, 1, 32, 32)).shape == (5, model.backbone.out_channels)
    assert isinstance(model.norm, nn.LayerNorm if layernorm else nn.Identity)


def test_small_cnn_feature_map():
    backbone = SmallCNN(in_channels=3, widths=(4, 8))
    assert backbone(torch.rand(2, 3, 16, 16)).shape == (2, 8, 8, 8)  # one 2×2 max-pool between two blocks
    assert backbone.out_channels == 8


def test_layernorm_has_no_affine_parameters():
    model = build_model("small_cnn", 1, 8, "max", True)
    assert list(model.norm.parameters()) == []
    feats = model.train().features(torch.rand(4, 1, 32, 32))  # batch statistics: features of order 1
    assert torch.allclose(feats.mean(1), torch.zeros(4), atol=1e-5)  # normalised per sample
    assert torch.allclose(feats.var(1, unbiased=False), torch.ones(4), atol=1e-3)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in build_model("small_cnn", 1, 8, "max", False).parameters())


class _Fixed(nn.Module):
    """A 'backbone' that returns its input as the feature map."""
    out_channels = 2

    def forward(self, x):
        return x


def test_max_and_avg_pooling_on_a_one_hot_map():
    fmap = torch.zeros(1, 2, 4, 4)
    fmap[0, 0, 1, 2] = 8.0  # channel 0: one active position out of 16
    fmap[0, 1] = 1.0  # channel 1: active everywhere
    pooled_max = EmbeddingNet(_Fixed(), 3, "max", layernorm=False).features(fmap)
    pooled_avg = EmbeddingNet(_Fixed(), 3, "avg", layernorm=False).features(fmap)
    assert pooled_max.tolist() == [[8.0, 1.0]]
    assert pooled_avg.tolist() == [[0.5, 1.0]]


def test_unknown_pooling_or_arch():
    with pytest.raises(ValueError, match="pooling"):
        build_model("small_cnn", 1, 8, "sum", True)
    with pytest.raises(ValueError, match="vgg"):
        build_model("vgg", 1, 8, "max", True)


def test_small_cnn_loads_a_backbone_state_dict(tmp_path):
    path = tmp_path / "backbone.pt"
    source = SmallCNN()
    torch.save(source.state_dict(), path)
    model = build_model("small_cnn", 1, 8, "max", True, weights=path)
    assert torch.equal(model.backbone.body[0].weight, source.body[0].weight)


def test_resnet50_without_weights():
    model = build_model("resnet50", 3, 16, "avg", True).eval()
    assert model.backbone.out_channels == 2048
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 16)


@pytest.mark.parametrize("arch", ["resnet50", "small_cnn"])
def test_missing_weights_file_names_the_path(arch, tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_model(arch, 3 if arch == "resnet50" else 1, 8, "max", True, weights=missing)


def test_resnet50_needs_three_channels():
    with pytest.raises(ValueError, match="3-channel"):
        build_model("resnet50", 1, 8, "max", True)


@pytest.fixture(scope="module")
def resnet50_body():
    """One randomly initialised ResNet-50 body (initialising one takes seconds on a CPU)."""
    return resnet_backbone(None)


@pytest.mark.parametrize("dataset", ["cub", "cars", "sop", "inshop"])
@pytest.mark.parametrize("dim", [2048, 512])
def test_paper_presets_build_their_model(dataset, dim, resnet50_body, monkeypatch):
    from pnca_utils import models
    from pnca_utils.config import make_config

    c = make_config("proxynca++", "paper", dataset=dataset, data_root="/data", weights=None, embedding_dim=dim)
    asked = []
    monkeypatch.setattr(models, "resnet_backbone", lambda weights, arch: asked.append((weights, arch)) or resnet50_body)
    model = build_model(c.arch, 3, c.embedding_dim, c.pooling, c.layernorm, c.weights).eval()
    assert asked == [(None, "resnet50")]  # the preset's arch is resnet50, built without weights here
    assert model.backbone.out_channels == 2048 and model.embedding.weight.shape == (dim, 2048)
    assert list(model.norm.parameters()) == []  # LayerNorm without affine parameters
    with torch.no_grad():  # a small image is enough to check the shapes: the pooling is global
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, dim) and torch.isfinite(out).all()


def test_resnet50_loads_a_local_state_dict(tmp_path):
    from torchvision.models import resnet50

    source = resnet50(weights=None)
    torch.save(source.state_dict(), tmp_path / "r50.pth")
    model = build_model("resnet50", 3, 8, "max", True, weights=tmp_path / "r50.pth")
    assert torch.equal(model.backbone[0].weight, source.conv1.weight)
    assert torch.equal(model.backbone[7][2].conv3.weight, source.layer4[2].conv3.weight)


def test_resnet50_rejects_a_file_that_is_not_its_state_dict(tmp_path):
    from pnca_utils.config import ConfigError

    torch.save(SmallCNN().state_dict(), tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    for name in ("other.pth", "text.pth"):
        with pytest.raises(ConfigError, match=f"{name} is not a torchvision ResNet-50 state dict"):
            build_model("resnet50", 3, 8, "max", True, weights=tmp_path / name)


def test_colour_images_reach_a_greyscale_small_cnn_as_their_grey_level():
    """colour_from_grey: a grey photo, normalised with ImageNet's statistics, gives the 3-channel network's first
    block the same output as the greyscale network gets from the same grey levels at (g - 0.5) / 0.5."""
    from pnca_utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from pnca_utils.models import colour_from_grey

    torch.manual_seed(0)
    grey_net = SmallCNN(1, widths=(4, 8))
    with torch.no_grad():  # pretrained-looking BatchNorm statistics
        grey_net.body[1].running_mean.uniform_(-1, 1)
        grey_net.body[1].running_var.uniform_(0.5, 2)
    colour_net = SmallCNN(3, widths=(4, 8))
    colour_net.load_state_dict(colour_from_grey(grey_net.state_dict()))
    grey_net.eval(), colour_net.eval()
    g = torch.rand(2, 1, 12, 12)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    first_block = slice(0, 2)  # conv, BatchNorm
    want = grey_net.body[first_block]((g - 0.5) / 0.5)
    got = colour_net.body[first_block]((g.expand(-1, 3, -1, -1) - mean) / std)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # away from the zero padding
    torch.testing.assert_close(got[inner], want[inner], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1-channel"):
        colour_from_grey(colour_net.state_dict())


def test_torchvision_weights_by_name_come_from_torchs_cache(tmp_path, monkeypatch):
    """weights="IMAGENET1K_V1" loads the file torchvision keeps in torch's cache (prepared here; no network)."""
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = resnet18(weights=None)
    cached = tmp_path / "hub" / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.save(source.state_dict(), cached)
    model = build_model("resnet18", 3, 8, "max", True, weights="IMAGENET1K_V1")
    assert model.backbone.out_channels == 512
    assert torch.equal(model.backbone[0].weight, source.conv1.weight)


def test_torchvision_weights_offline_and_uncached_is_one_clear_error(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torch.hub

    from pnca_utils.config import ConfigError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    where = str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth")
    with pytest.raises(ConfigError, match="not in torch's cache") as err:
        build_model("resnet50", 3, 8, "max", True, weights="IMAGENET1K_V2")
    assert where in str(err.value)
    with pytest.raises(ConfigError, match="no IMAGENET1K_V2 weights for resnet18"):
        build_model("resnet18", 3, 8, "max", True, weights="IMAGENET1K_V2")
