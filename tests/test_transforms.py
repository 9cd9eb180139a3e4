"""Transforms: output shapes and value ranges."""
import numpy as np
import pytest
import torch
from PIL import Image

from pnca_utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD, photo_transforms, tensor_transforms


@pytest.mark.parametrize("train", [True, False])
def test_photo_transforms(train):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8))
    x = photo_transforms(32, train=train)(photo)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    low = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    high = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    for c in range(3):
        assert low[c] - 1e-5 <= x[c].min() and x[c].max() <= high[c] + 1e-5


def test_photo_test_transform_is_deterministic():
    photo = Image.new("RGB", (40, 30), (255, 0, 0))
    a, b = (photo_transforms(24, train=False)(photo) for _ in range(2))
    assert torch.equal(a, b)
    assert torch.allclose(a[0], torch.tensor((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))


@pytest.mark.parametrize("channels, size", [(1, 28), (1, 40), (3, 16)])
def test_tensor_transforms(channels, size):
    image = torch.rand(channels, 28, 28)
    x = tensor_transforms(size, native_size=28, train=True)(image)
    assert x.shape == (channels, size, size)
    assert x.min() >= -1 - 1e-5 and x.max() <= 1 + 1e-5
    if size == 28:
        assert torch.allclose(x, image * 2 - 1)
    assert torch.equal(x, tensor_transforms(size, 28, train=False)(image))
    assert torch.equal(image, image.clamp(0, 1))  # the input is not modified in place
