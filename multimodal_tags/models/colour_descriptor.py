"""A colour descriptor beside an image encoder's vector: spec `ENCODER+colour` (e.g. `effnet-lite0+colour`).

An ImageNet CNN's pooled vector keeps shape well and colour poorly: a supervised probe of colour on
EfficientNet-Lite0's vector reaches 0.45 on Myntra val, a plain RGB histogram of the product's pixels
0.58 (docs/clip.md). So the wrapped encoder appends to the vector a histogram of the product region's
colours, computed from the same preprocessed pixels (no second decode):

- the background is the median colour of the photo's border pixels (studio shots: white or grey);
- the product region is every pixel farther than `FOREGROUND_DISTANCE` from it in some channel (the
  whole photo when that leaves under 2% of it);
- its colours fall into 8 x 8 x 8 RGB bins; the share per bin, square-rooted (the Hellinger map, so a
  linear layer compares distributions fairly), is the descriptor: 512 numbers.
"""
from __future__ import annotations

import torch

from .encoder_base import EncoderOutput
from .image_encoders import ImageEncoder

SUFFIX = "+colour"
BINS = 8  # per channel
DIM = BINS ** 3
FOREGROUND_DISTANCE = 0.08  # in [0, 1] RGB units


def _normalisation(transform) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the Normalize step in a preprocessing pipeline (0 and 1 when it has none)."""
    for t in getattr(transform, "transforms", []):
        if hasattr(t, "mean") and hasattr(t, "std"):
            return (torch.as_tensor(t.mean, dtype=torch.float32).view(1, 3, 1, 1),
                    torch.as_tensor(t.std, dtype=torch.float32).view(1, 3, 1, 1))
    return torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)


def colour_histogram(rgb: torch.Tensor) -> torch.Tensor:
    """[b, 3, h, w] pixels in [0, 1] -> [b, 512] square-rooted shares of the product region per RGB bin."""
    b = rgb.shape[0]
    rgb = rgb.float().clamp(0, 1)
    border = torch.cat([rgb[:, :, 0], rgb[:, :, -1], rgb[:, :, :, 0], rgb[:, :, :, -1]], dim=2)  # [b, 3, 2h+2w]
    background = border.median(dim=2).values[:, :, None, None]
    fg = ((rgb - background).abs().amax(dim=1) > FOREGROUND_DISTANCE).flatten(1).float()  # [b, hw]
    fg = torch.where(fg.mean(1, keepdim=True) < 0.02, torch.ones_like(fg), fg)
    q = (rgb * BINS).long().clamp(max=BINS - 1).flatten(2)  # [b, 3, hw]
    index = q[:, 0] * BINS * BINS + q[:, 1] * BINS + q[:, 2] + torch.arange(b, device=rgb.device)[:, None] * DIM
    hist = torch.bincount(index.flatten(), weights=fg.flatten(), minlength=b * DIM).view(b, DIM)
    return (hist / hist.sum(1, keepdim=True).clamp(min=1)).sqrt()


class ColourDescribed(ImageEncoder):
    """`base`'s pooled vector followed by `colour_histogram` of the photo it saw."""

    def __init__(self, base: ImageEncoder):
        super().__init__()
        self.base, self.spec = base, base.spec + SUFFIX
        self.dim, self.random_weights = base.dim + DIM, base.random_weights
        self._sync()

    def _sync(self) -> None:
        self.transform = self.base.transform
        self.mean, self.std = _normalisation(self.transform)

    def set_image_size(self, size: int) -> "ColourDescribed":
        self.base.set_image_size(size)
        self._sync()
        return self

    def cache_id(self) -> str:
        return self.base.cache_id() + SUFFIX

    def set_precision(self, precision: str) -> "ColourDescribed":
        self.base.set_precision(precision)  # the CNN runs under this wrapper's autocast; its compiling asks
        return super().set_precision(precision)

    def set_compile(self, mode: str) -> "ColourDescribed":
        self.base.set_compile(mode)
        return super().set_compile(mode)

    def expect(self, items: int) -> None:
        self.base.expect(items)  # the CNN, by its own rules
        super().expect(items)  # the histogram: compiled, 19 -> 3 ms a batch of 64 at 128 px, the same values

    supports_compile = True

    def compiled_part(self, pixels: torch.Tensor) -> torch.Tensor:
        """The colour histogram of preprocessed pixels."""
        return colour_histogram(pixels.float() * self.std.to(pixels.device) + self.mean.to(pixels.device))

    def preprocessing_id(self) -> str:
        return self.base.preprocessing_id() + f"|colour-hist-{BINS}"

    def forward(self, pixels: torch.Tensor, return_tokens: bool = False) -> EncoderOutput:
        out = self.base(pixels, return_tokens=return_tokens)
        hist = (self.compiled_runner() or self.compiled_part)(pixels).to(out.pooled.dtype)
        return EncoderOutput(torch.cat([out.pooled, hist], dim=-1), out.tokens)
