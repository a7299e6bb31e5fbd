"""Supervised ceilings for our CLIP's zero-shot colour and category (docs/clip.md).

    python experiments/clip_ceiling.py --catalog CATALOG --clip FOLDER --out OUT [--cache DIR]

A zero-shot classifier is not trained on labels; a linear one on the same features is. So a logistic
regression probe bounds what zero-shot prompts can reach. Trained on `--train` random train photos,
scored on the first `--val` val photos, for colour (`colour:` tag) and category:
- the CLIP's trunk vector and its projected embedding (`mmtags-clip:FOLDER+trunk`);
- for colour, a 512-bin RGB histogram of the photo's non-white pixels (no network at all).
Writes OUT/results.json; prints the table.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from PIL import Image


from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features.encode import encode_and_load
from multimodal_tags.models.factory import create_image_encoder
from multimodal_tags.models.product_clip import SPEC_PREFIX, WITH_TRUNK

from experiments.common import markdown_table


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--clip", required=True, help="a trained CLIP folder (mmtags clip train)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", help="feature cache (default OUT/features-cache)")
    ap.add_argument("--train", type=int, default=12000)
    ap.add_argument("--val", type=int, default=4000)
    return ap.parse_args(argv)


def colour_of(p) -> str:
    return next((t for t in p.tags if t.startswith("colour:")), "")


def colour_histogram(path: Path, bins: int = 8, white: int = 235) -> np.ndarray:
    """Square-rooted share of the photo's non-white pixels in each of bins^3 RGB cells (at 60x80)."""
    rgb = np.asarray(Image.open(path).convert("RGB").resize((60, 80))).reshape(-1, 3).astype(np.int32)
    fg = (rgb < white).any(1)
    px = rgb[fg] if fg.sum() > 50 else rgb  # an almost white photo: use every pixel
    step = 256 // bins
    idx = (px[:, 0] // step) * bins * bins + (px[:, 1] // step) * bins + px[:, 2] // step
    h = np.bincount(idx, minlength=bins ** 3).astype(np.float32)
    return np.sqrt(h / h.sum())


def probe(xt, yt, xv, yv, c: float = 0.5, standardise: bool = True) -> float:
    """Val accuracy of a logistic regression trained on (xt, yt)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if standardise:
        scaler = StandardScaler().fit(xt)
        xt, xv = scaler.transform(xt), scaler.transform(xv)
    return float(LogisticRegression(C=c, max_iter=500).fit(xt, yt).score(xv, yv))


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = read_catalog(a.catalog)
    encoder = create_image_encoder(f"{SPEC_PREFIX}{a.clip}{WITH_TRUNK}").set_precision("auto")
    trunk_dim = int(encoder.clip.visual.trunk.num_features)
    train = [p for p in catalog.products if p.split == "train" and p.image]
    train = [train[i] for i in np.random.default_rng(0).permutation(len(train))[:a.train]]
    val = [p for p in catalog.products if p.split == "val" and p.image][:a.val]
    with FeatureCache(a.cache or out / "features-cache") as cache:
        ft, fv = (encode_and_load(ps, cache, catalog.image_root, image_encoder=encoder) for ps in (train, val))
    results: dict = {"clip": a.clip, "train_photos": len(train), "val_photos": len(val)}
    for task, label in (("colour", colour_of), ("category", lambda p: p.category or "")):
        yt, yv = np.array([label(p) for p in train]), np.array([label(p) for p in val])
        mt, mv = ft["has_image"] & (yt != ""), fv["has_image"] & (yv != "")
        for name, cols in (("trunk", slice(0, trunk_dim)), ("embedding", slice(trunk_dim, None))):
            results[f"{task}_{name}_probe_acc"] = probe(ft["image"][mt][:, cols], yt[mt], fv["image"][mv][:, cols], yv[mv])
        results[f"{task}_majority_acc"] = collections.Counter(yv[mv]).most_common(1)[0][1] / int(mv.sum())
    yt, yv = np.array([colour_of(p) for p in train]), np.array([colour_of(p) for p in val])
    ht = np.stack([colour_histogram(catalog.image_root / p.image) for p in train])
    hv = np.stack([colour_histogram(catalog.image_root / p.image) for p in val])
    results["colour_histogram_probe_acc"] = probe(ht[yt != ""], yt[yt != ""], hv[yv != ""], yv[yv != ""], c=2.0,
                                                  standardise=False)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table([{"metric": k, "value": v} for k, v in results.items() if isinstance(v, float)]))
    return results


if __name__ == "__main__":
    main()
