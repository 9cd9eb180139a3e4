"""Image transforms: ProxyNCA++'s photo pipeline for real data sets, and a minimal one for in-memory tensors."""
from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def photo_transforms(image_size: int, train: bool, channels: int = 3) -> T.Compose:
    """PIL image -> normalised tensor (channels, image_size, image_size), as in ProxyNCA++.

    Train: random resized crop and horizontal flip. Test: resize the short side to
    image_size * 288/256 (288 for 256-pixel crops), then centre crop. Colour images are
    normalised with ImageNet's statistics; greyscale ones (channels=1) as the embedded set
    (mean 0.5, std 0.5), the scale of the small CNN's pretraining.
    """
    if train:
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(image_size * 288 / 256)), T.CenterCrop(image_size)]
    normalise = T.Normalize(IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else T.Normalize((0.5,), (0.5,))
    return T.Compose(steps + [T.ToTensor(), normalise])


def tensor_transforms(image_size: int, native_size: int, train: bool) -> T.Compose:
    """Float tensor (C, H, W) in [0, 1] -> (C, image_size, image_size) in [-1, 1].

    Resizes (bilinear, antialiased) only when image_size != native_size, then normalises
    every channel with mean 0.5 and std 0.5. `train` adds no augmentation: the embedded
    images already vary in position and shape; the argument is kept so that every data set
    is built the same way.
    """
    steps = []
    if image_size != native_size:
        steps.append(T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    # A one-element mean/std broadcasts over any number of channels.
    steps.append(T.Normalize((0.5,), (0.5,)))
    return T.Compose(steps)
