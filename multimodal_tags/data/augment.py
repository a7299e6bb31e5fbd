"""Data augmentation for the fast path: seeded text and image perturbations.

Augmented views are encoded once and cached like clean inputs (each view under its own key), and
training draws a random view per product per epoch: the encoder sees varied inputs at no extra cost
per epoch. Seeds come from (item hash, view), so views are the same on every run and machine.
"""
from __future__ import annotations

import hashlib
import random

from PIL import Image, ImageEnhance, ImageOps


def view_seed(item_hash: str, view: int) -> int:
    return int(hashlib.sha256(f"{item_hash}:{view}".encode()).hexdigest()[:8], 16)


def augment_text(text: str, seed: int, word_dropout: float = 0.15, swap: float = 0.1) -> str:
    """Drop words and swap neighbours at random; CJK text (no spaces) drops and swaps characters."""
    rng = random.Random(seed)
    spaced = " " in text.strip()
    units = text.split() if spaced else list(text)
    kept = [u for u in units if rng.random() >= word_dropout] or units[:1]
    for i in range(len(kept) - 1):
        if rng.random() < swap:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return (" " if spaced else "").join(kept)


def augment_image(image: Image.Image, seed: int) -> Image.Image:
    """A random crop (70-100% of each side), a horizontal flip half the time, brightness/contrast jitter."""
    rng = random.Random(seed)
    w, h = image.size
    cw, ch = max(1, int(w * rng.uniform(0.7, 1.0))), max(1, int(h * rng.uniform(0.7, 1.0)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Contrast(out).enhance(rng.uniform(0.8, 1.2))
