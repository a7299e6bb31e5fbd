"""A photo transform run in two halves: its PIL steps (resize, crop) per photo, its to-tensor and normalise
steps once per batch.

torchvision's ToTensor and Normalize cost about 0.6 ms a photo at 128 px, most of it per-call overhead on
a 3x128x128 tensor. Done on the stacked uint8 batch they are the same arithmetic (x / 255, then (x - mean)
/ std, in float32: the same values, bit for bit), and the batch comes out channels-last, the layout the
CNN encoders run in, without a copy. A transform whose tensor steps are anything else runs whole, per photo.
"""
from __future__ import annotations

import numpy as np
import torch

from .prefetch import split_transform

_BATCHABLE = (["ToTensor", "Normalize"], ["MaybeToTensor", "Normalize"])


class PixelSteps:
    """`photo(image)` per photo (a uint8 HxWx3 array, or a tensor where the transform cannot be split),
    `stack(photos)` per batch: the same pixels as stacking `transform(image)` for each."""

    def __init__(self, transform):
        self.transform = transform
        pil_steps, tensor_steps = split_transform(transform)
        steps = list(tensor_steps.transforms)
        self.batched = [type(s).__name__ for s in steps] in _BATCHABLE
        if self.batched:
            self.pil_steps = pil_steps
            self.mean = torch.as_tensor(steps[1].mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.as_tensor(steps[1].std, dtype=torch.float32).view(1, -1, 1, 1)

    def photo(self, image) -> np.ndarray | torch.Tensor:
        if self.batched:
            array = np.asarray(self.pil_steps(image))
            if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == self.mean.shape[1]:
                return array
        return self.transform(image)

    def stack(self, photos: list) -> torch.Tensor:
        """[b, c, h, w] float32 pixels of one batch of `photo` outputs."""
        if not all(isinstance(p, np.ndarray) for p in photos):
            return torch.stack([self.transform_array(p) if isinstance(p, np.ndarray) else p for p in photos])
        x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2)  # a view: channels-last memory
        return x.float().div_(255).sub_(self.mean).div_(self.std)

    def transform_array(self, array: np.ndarray) -> torch.Tensor:
        """One photo's array through the to-tensor and normalise steps (a batch that mixes kinds)."""
        return self.stack([array])[0]
