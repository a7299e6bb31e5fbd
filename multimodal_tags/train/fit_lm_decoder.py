"""Training the LM tag decoder on a tagger's frozen fused vectors (as ClipCap trains on frozen CLIP vectors).

The tagger (fusion and heads) is trained first, as always; its fused vector of every product is computed
once, and the mapper and the LM's adapters then learn to write each product's tags after its title.
Batches are drawn at random and grouped by length inside the decoder; AdamW with a short warm-up and a
linear decay; bf16 autocast where the device has it. The epoch with the lowest validation loss is kept.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LMDecoderConfig
from ..data.catalog import read_catalog
from ..data.feature_cache import FeatureCache
from ..data.schema import Product
from ..features import FeatureSource, RunConfig
from ..metrics import prf
from ..models.causal_lm import load_causal_lm
from ..models.encoder_base import WeightsUnavailable
from ..models.lm_decoder import LMTagDecoder
from ..models.tag_text import TagTrie, key_prompt
from ..models.tag_tokenizer import CATEGORY_KEY, tag_key
from ..models.tagger import Tagger

WARMUP_STEPS = 50


@dataclass
class DecoderData:
    """What the LM decoder learns from: fused vectors, titles, and the tags to write."""

    fused: torch.Tensor  # [n, dim]
    titles: list[str]
    descriptions: list[str | None]
    tags: list[list[str]]
    prior: torch.Tensor | None = None  # [n, trie tags] the tagger's heads (LMTagDecoder.prior_matrix), for fusion

    @classmethod
    def of(cls, fused: torch.Tensor, products: Sequence[Product]) -> "DecoderData":
        return cls(fused, [p.title for p in products], [p.description for p in products], with_category(products))

    def __len__(self) -> int:
        return len(self.titles)

    def part(self, rows: slice) -> "DecoderData":
        prior = None if self.prior is None else self.prior[rows]
        return DecoderData(self.fused[rows], self.titles[rows], self.descriptions[rows], self.tags[rows], prior)


def with_category(products: Sequence[Product]) -> list[list[str]]:
    """Each product's tags with its category as the tag `category:NAME` (the LM writes it first)."""
    return [([f"{CATEGORY_KEY}:{p.category}"] if p.category else []) + list(p.tags) for p in products]


@torch.no_grad()
def fused_vectors(model: Tagger, source, batch_size: int = 512) -> torch.Tensor:
    """The tagger's fused vector [n, dim] of every product of a FeatureSource."""
    return tagger_outputs(model, source, batch_size)[0]


@torch.no_grad()
def tagger_outputs(model: Tagger, source, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fused vectors [n, dim], tag head probabilities [n, tags], category probabilities [n, categories])."""
    model.eval()
    parts = [(torch.zeros(0, model.cfg.dim), torch.zeros(0, len(model.tags)), torch.zeros(0, len(model.categories)))]
    for s in range(0, len(source), batch_size):
        out = model(source.subset(range(s, min(s + batch_size, len(source)))).batch())
        parts.append((out["fused"].float(), torch.sigmoid(out["tag_logits"].float()),
                      torch.softmax(out["category_logits"].float(), -1)))
    return tuple(torch.cat(column) for column in zip(*parts))


def with_prior(decoder: LMTagDecoder, model: Tagger, data: DecoderData, tag_probs: torch.Tensor,
               category_probs: torch.Tensor) -> DecoderData:
    """`data` with the tagger's heads as its prior over the decoder's trie (for shallow fusion)."""
    prior = decoder.prior_matrix(model.tags, tag_probs, model.categories, category_probs)
    return dataclasses.replace(data, prior=prior)


def build_lm_decoder(cfg: LMDecoderConfig, model: Tagger, train_tags: list[list[str]],
                     allow_random: bool = False) -> LMTagDecoder:
    """A new LM decoder for a tagger: its base LM by spec, the vocabulary's trie (the tagger's tags and its
    categories as `category:NAME`, written first)."""
    lm = load_causal_lm(cfg.backend)
    if lm.random_weights and not allow_random:
        raise WeightsUnavailable(f"decoder {cfg.backend!r} has random weights; a real run needs a pretrained LM "
                                 f"(allow_random only for tests)")
    vocab = [f"{CATEGORY_KEY}:{c}" for c in model.categories] + list(model.tags)
    return LMTagDecoder(lm, TagTrie.fit(lm.tokenizer, vocab, train_tags, first_key=CATEGORY_KEY), model.cfg.dim, cfg)


def _loss(decoder: LMTagDecoder, data: DecoderData, rows: list[int], prompts, targets, device) -> torch.Tensor:
    return decoder(data.fused[rows].to(device), [prompts[r] for r in rows], [targets[r] for r in rows])


@torch.no_grad()
def validation_loss(decoder: LMTagDecoder, data: DecoderData, batch_size: int = 64) -> float:
    """Mean teacher-forced loss per target token over `data` (weighted by tokens)."""
    decoder.eval()
    device = next(decoder.mapper.parameters()).device
    prompts, targets = decoder.prompt_ids(data.titles, data.descriptions), [decoder.trie.target(t) for t in data.tags]
    total, tokens = 0.0, 0
    for s in range(0, len(data), batch_size):
        rows = list(range(s, min(s + batch_size, len(data))))
        n = sum(len(targets[r]) for r in rows)
        total += float(_loss(decoder, data, rows, prompts, targets, device)) * n
        tokens += n
    return total / max(tokens, 1)


def asked_examples(decoder: LMTagDecoder, data: DecoderData, share: float, seed: int = 0):
    """Ask practice: for `share` of the products, (row, prompt + ` key:`, ` value;`) for one of its keys
    (not the category), drawn at random; what the LM is asked at tagging time (`LMTagDecoder.ask`)."""
    rng, out = random.Random(seed), []
    prompts = decoder.prompt_ids(data.titles, data.descriptions)
    for r, tags in enumerate(data.tags):
        keyed = [t for t in tags if ":" in t and tag_key(t) != CATEGORY_KEY]
        if keyed and rng.random() < share:
            key, value = rng.choice(keyed).split(":", 1)
            ask = decoder.tokenizer.encode(key_prompt(key), add_special_tokens=False)
            out.append((r, prompts[r] + ask, decoder.tokenizer.encode(f" {value.strip()};", add_special_tokens=False)))
    return out


def fit_lm_decoder(decoder: LMTagDecoder, train: DecoderData, val: DecoderData | None,
                   log: Callable[[str], None] = print, device: str = "cpu") -> dict:
    """Train the mapper and adapters; returns {"seconds", "products_seen", "epochs": [{train_loss,
    val_loss}], "best_epoch"}. The decoder ends with the best epoch's weights (by validation loss). With
    `ask_practice`, asked-key examples (`asked_examples`) join the products' tag lists."""
    cfg = decoder.cfg
    decoder.to(device)
    prompts, targets = decoder.prompt_ids(train.titles, train.descriptions), [decoder.trie.target(t) for t in train.tags]
    asked = asked_examples(decoder, train, cfg.ask_practice, cfg.seed) if cfg.ask_practice > 0 else []
    if asked:
        rows, ask_prompts, ask_targets = zip(*asked)
        train = dataclasses.replace(train, fused=torch.cat([train.fused, train.fused[list(rows)]]))
        prompts, targets = prompts + list(ask_prompts), targets + list(ask_targets)
    opt = torch.optim.AdamW(decoder.trainable_groups(), weight_decay=0.0)
    steps = cfg.epochs * ((len(prompts) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP_STEPS) * max(0.0, 1 - s / max(steps, 1)))
    gen = torch.Generator().manual_seed(cfg.seed)
    history, best, best_state, t0, seen = [], float("inf"), None, time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        decoder.train()
        order, running = torch.randperm(len(prompts), generator=gen).tolist(), []
        for s in range(0, len(order), cfg.batch_size):
            loss = _loss(decoder, train, order[s:s + cfg.batch_size], prompts, targets, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            running.append(float(loss.detach()))
            seen += len(order[s:s + cfg.batch_size])
            if len(running) % 50 == 0:
                log(f"lm decoder epoch {epoch} step {len(running)}: loss {sum(running[-50:]) / 50:.4f}, "
                    f"{seen / (time.perf_counter() - t0):.1f} products/s")
        row = {"epoch": epoch, "train_loss": sum(running) / max(len(running), 1)}
        if val is not None and len(val):
            row["val_loss"] = validation_loss(decoder, val)
        history.append(row)
        log(f"lm decoder epoch {epoch}: {row}")
        score = row.get("val_loss", row["train_loss"])
        if score < best:
            best, best_epoch = score, epoch
            if epoch < cfg.epochs - 1:  # the last epoch's weights are the decoder's own: no copy needed
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in decoder.state_dict().items()
                                            if "lora_" in k or k.startswith("mapper.") or cfg.finetune == "full"})
            else:
                best_state = None
    if best_state is not None:
        decoder.load_state_dict(best_state, strict=False)
    decoder.eval()
    return {"seconds": round(time.perf_counter() - t0, 1), "products_seen": seen, "epochs": history,
            "best_epoch": best_epoch}


FLOORS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def generate_all(decoder: LMTagDecoder, data: DecoderData) -> list[dict[str, float]]:
    """The decoder's tags {tag: score} for every product of `data` (no floor)."""
    return [dict(g) for g in decoder.generate(data.fused, data.titles, data.descriptions, data.prior)]


def floored_tags(generated: list[dict[str, float]], floor: float) -> list[set[str]]:
    """Each product's generated tags at or above `floor`, the category tag aside."""
    return [{t for t, s in g.items() if s >= floor and tag_key(t) != CATEGORY_KEY} for g in generated]


def tag_f1(gold: list[list[str]], generated: list[dict[str, float]], floor: float) -> float:
    """Micro-F1 of generated tags at or above `floor` (the category tag aside)."""
    gold_sets = [{t for t in g if tag_key(t) != CATEGORY_KEY} for g in gold]
    return prf(gold_sets, floored_tags(generated, floor))[2]


def best_floor(gold: list[list[str]], generated: list[dict[str, float]]) -> tuple[float, float]:
    """(the floor of FLOORS with the best tag micro-F1, that F1); the lowest such floor on a tie."""
    f1 = {f: tag_f1(gold, generated, f) for f in FLOORS}
    floor = max(FLOORS, key=f1.__getitem__)
    return floor, f1[floor]


def tune_floor(decoder: LMTagDecoder, val: DecoderData) -> float:
    """The score floor (of FLOORS) that gives the best tag micro-F1 on `val`; set on the decoder."""
    decoder.floor = best_floor(val.tags, generate_all(decoder, val))[0]
    return decoder.floor


def tune_prior_weight(decoder: LMTagDecoder, val: DecoderData, weights: Sequence[float]) -> dict:
    """The shallow-fusion weight (of `weights`, 0 among them) and floor with the best tag micro-F1 on `val`
    (which carries its prior); both set on the decoder. Returns {"weight", "floor", "val_f1": {w: F1}}."""
    scores = {}  # weight -> (floor, F1)
    for w in sorted({0.0, *weights}):
        decoder.cfg.prior_weight = w
        scores[w] = best_floor(val.tags, generate_all(decoder, val))
    best = max(scores, key=lambda w: scores[w][1])
    decoder.cfg.prior_weight, decoder.floor = best, scores[best][0]
    return {"weight": best, "floor": decoder.floor, "val_f1": {w: round(f, 4) for w, (_, f) in scores.items()}}


def train_lm_decoder(model_dir: str | Path, catalog_path: str | Path, cfg: LMDecoderConfig,
                     settings: RunConfig | None = None, max_train: int | None = None,
                     floor_products: int = 500, device: str = "cpu") -> dict:
    """Train an LM decoder for the tagger in `model_dir` on a catalog's train split (its first `max_train`
    products), its floor tuned on the first `floor_products` val products; saved into
    MODEL_DIR/lm_decoder/. Returns the fit summary with the floor."""
    settings = settings or RunConfig()
    catalog, model = read_catalog(catalog_path), Tagger.load(model_dir)
    split = {s: [p for p in catalog.products if p.split == s] for s in ("train", "val")}
    split["train"] = split["train"][:max_train] if max_train else split["train"]
    split["val"] = split["val"][:floor_products]
    if not split["train"]:
        raise ValueError(f"{catalog_path}: no train products to teach the decoder")
    data, heads = {}, {}
    with FeatureCache(settings.cache_for(catalog_path)) as cache:
        for s, products in split.items():
            source = FeatureSource.encode(products, settings.encoders_for(model.cfg), cache, catalog.image_root,
                                          model.cfg, log=settings.log)
            fused, *heads[s] = tagger_outputs(model, source)
            data[s] = DecoderData.of(fused, products)
    decoder = build_lm_decoder(cfg, model, data["train"].tags, settings.allow_random_weights)
    fit = fit_lm_decoder(decoder, data["train"], data["val"] if len(data["val"]) else None, settings.log, device)
    decoder.to("cpu")
    data["val"] = with_prior(decoder, model, data["val"], *heads["val"])  # the floor is tuned as it will decode
    fit["floor"] = tune_floor(decoder, data["val"]) if len(data["val"]) else 0.0
    decoder.save(model_dir)
    settings.log(f"LM decoder {cfg.backend} ({cfg.finetune}) saved in {Path(model_dir) / 'lm_decoder'}; floor "
                 f"{fit['floor']}, {fit['seconds']} s")
    return fit
