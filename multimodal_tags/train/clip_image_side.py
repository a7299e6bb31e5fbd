"""The photo side of CLIP training: locked, or with the last stages of the EfficientNet trunk unlocked.

Locked, a photo is its cached trunk vector. Unlocked, the trunk is split before its last `stages` stages:
the frozen part runs once per photo (its feature maps, 7x7x192 at 224 px before EfficientNet-Lite0's last
stage, kept in float16 and saved beside the feature cache), and only the tail (those stages, `conv_head`,
`bn2`, pooling) runs in training. Batch-norm statistics stay frozen (open_clip's `freeze_bn_stats`).
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data.schema import Product
from ..files import replacing
from ..features.encode import ImageFiles, collate_images


class ImageSide:
    """Trunk vectors of photos for the loss (before the projection)."""

    def __init__(self, trunk, stages: int = 0, autocast=contextlib.nullcontext):
        """`trunk`: a timm EfficientNet-style model (our CLIP's `clip.visual.trunk`, or a plain image encoder's)."""
        self.trunk, self.stages, self.autocast = trunk, stages, autocast
        if stages and not all(hasattr(self.trunk, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            raise ValueError(f"unlocking image stages needs an EfficientNet-style timm trunk, not "
                             f"{type(self.trunk).__name__}")

    def parameters(self) -> list[torch.nn.Parameter]:
        """The unlocked tail's parameters (none while locked); everything before it is frozen."""
        if not self.stages:
            return []
        for p in self.trunk.parameters():
            p.requires_grad = False
        tail = [*self.trunk.blocks[-self.stages:].parameters(), *self.trunk.conv_head.parameters(),
                *self.trunk.bn2.parameters()]
        for p in tail:
            p.requires_grad = True
        return tail

    def head_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the frozen part of the trunk gives (the tail's input)."""
        t = self.trunk
        return t.blocks[:-self.stages](t.bn1(t.conv_stem(pixels)))

    def tail(self, maps: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        return t.global_pool(t.bn2(t.conv_head(t.blocks[-self.stages:](maps))))

    def vectors(self, cached: torch.Tensor, rows: Sequence[int], grad: bool = False, chunk: int = 512) -> torch.Tensor:
        """Trunk vectors of `rows` of `cached` (trunk vectors, or the tail's input maps when unlocked)."""
        if not self.stages:
            return cached[rows]
        self.trunk.eval()  # frozen batch-norm statistics
        with torch.set_grad_enabled(grad), self.autocast():
            return torch.cat([self.tail(cached[rows[s:s + chunk]].float()).float()
                              for s in range(0, len(rows), chunk)])

    @torch.no_grad()
    def maps(self, products: Sequence[Product], transform, image_root: Path, folder: Path, trunk_key: str,
             precision_ctx, prefix: str = "clip-maps") -> tuple[torch.Tensor, list[bool]]:
        """(float16 tail-input maps of the photos that load, loaded mask), saved under `folder` by content."""
        ident = hashlib.sha256("|".join([trunk_key, str(self.stages), *(p.image_hash for p in products)]).encode())
        path = Path(folder) / f"{prefix}-{ident.hexdigest()[:20]}.pt"
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            return saved["maps"], saved["ok"].tolist()
        loader = DataLoader(ImageFiles([(p.image_hash, p.image) for p in products], Path(image_root), transform),
                            batch_size=64, num_workers=1, collate_fn=collate_images)
        self.trunk.eval()
        out, ok = [], []
        for batch in loader:
            ok += [err is None for _, _, err in batch]
            pixels = [x for _, x, err in batch if err is None]
            if pixels:
                with precision_ctx():
                    out.append(self.head_input(torch.stack(pixels)).half())
        maps = torch.cat(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as f:  # an interrupted run leaves no half-written maps to load next time
            torch.save({"maps": maps, "ok": torch.tensor(ok)}, f)
        return maps, ok
