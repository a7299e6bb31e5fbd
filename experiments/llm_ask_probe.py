"""Probe: does practice at asking teach the LM decoder to answer keys it never saw?

    python experiments/llm_ask_probe.py --run OUT --catalog CATALOG [--train-products 3000] [--ask-practice 0.5]

Reuses the tagger and the subset catalog of an `experiments/llm_decoder.py` run (OUT/scratch/model,
OUT/catalog-subset.jsonl): trains a new LM decoder on the first --train-products train products, with
--ask-practice of them also teaching ` key:` -> value (LMDecoderConfig.ask_practice), then asks the
held-out keys over the first --test-products test products (against the same two baselines as the main
experiment) and scores the tags of the first --score-products. CATALOG is the full catalog the subset was
cut from (the held-out keys' labels). Writes OUT/ask-probe-N-SHARE.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from multimodal_tags.config import LMDecoderConfig
from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.feature_cache import FeatureCache
from multimodal_tags.features import FeatureSource, RunConfig
from multimodal_tags.models.tagger import Tagger
from multimodal_tags.train.fit_lm_decoder import (DecoderData, build_lm_decoder, fit_lm_decoder, fused_vectors,
                                              generate_all)

from experiments.llm_decoder import HELDOUT, decoder_scores, heldout_scores


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="the OUT of an llm_decoder.py run")
    ap.add_argument("--catalog", type=Path, required=True, help="the full catalog (held-out labels)")
    ap.add_argument("--train-products", type=int, default=3000)
    ap.add_argument("--ask-practice", type=float, default=0.5)
    ap.add_argument("--test-products", type=int, default=1500)
    ap.add_argument("--score-products", type=int, default=300)
    ap.add_argument("--backend", default="smollm2-135m")
    ap.add_argument("--heldout-keys", default=",".join(HELDOUT))
    ap.add_argument("--allow-random-weights", action="store_true", help="tiny models (tests only)")
    a = ap.parse_args(argv)
    model, cat = Tagger.load(a.run / "scratch" / "model"), read_catalog(a.run / "catalog-subset.jsonl")
    train = [p for p in cat.products if p.split == "train"][:a.train_products]
    test = [p for p in cat.products if p.split == "test"][:a.test_products]
    with FeatureCache(a.run / "features-cache") as fc:
        encoders = RunConfig(allow_random_weights=a.allow_random_weights).encoders_for(model.cfg)
        data = [DecoderData.of(fused_vectors(model, FeatureSource.encode(ps, encoders, fc, cat.image_root, model.cfg)),
                               ps) for ps in (train, test)]
    decoder = build_lm_decoder(LMDecoderConfig(backend=a.backend, ask_practice=a.ask_practice), model, data[0].tags,
                               allow_random=a.allow_random_weights)
    fit = fit_lm_decoder(decoder, data[0], None)
    full = read_catalog(a.catalog).products
    by_id = {p.id: i for i, p in enumerate(full)}
    held = heldout_scores(decoder, full, [by_id[p.id] for p in test], data[1], [full[by_id[p.id]] for p in train],
                          [k.strip() for k in a.heldout_keys.split(",") if k.strip()], print)
    scored = decoder_scores(test[:a.score_products], generate_all(decoder, data[1].part(slice(0, a.score_products))),
                            decoder.floor)
    out = {"train_products": len(train), "ask_practice": a.ask_practice, "fit_s": fit["seconds"],
           "test_products": len(test), "scored_products": a.score_products, "tags": scored, **held}
    (a.run / f"ask-probe-{len(train)}-{a.ask_practice}.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
