"""The Tagger: fusion + category head + tag head + GPT-2 tag decoder, saved and loaded as one folder.

It works on encoder vectors (the fast path: frozen encoders, cached features). The folder holds
`config.json` (model config, categories, tag vocabulary, format version), `model.safetensors`
(weights and tuned per-tag thresholds) and the tag tokenizer.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ModelConfig, model_config_from_dict, to_dict
from ..files import swap_in_folder, temp_path
from .decoder import TagDecoder
from .fusion import create_fusion, modality_dropout
from .lexical import LexicalEncoder
from .heads import AdversaryHead, CategoryHead, PhotoHead, TagHead, photo_loss, tag_loss
from .tag_tokenizer import (ALL_CATEGORIES, TagTokenizer, TextTagTokenizer, columns_by_key, load_tokenizer,
                            save_tokenizer, single_value_columns)
from .word_scores import PACKED, PRUNE_BELOW, WordScores, pack_table, unpack_table

#: Head tags scoring at least this share of their threshold, but under it, are reported as suggested (at
#: most MAX_SUGGESTED per product): what a reviewer is asked about first (feedback/review_queue.py).
SUGGEST_FROM, MAX_SUGGESTED = 0.5, 5
FORMAT = "mmtags-model/3"  # 2: lexical IDF table and the decoder threshold are saved; 3: word scores packed
READABLE = ("mmtags-model/2", FORMAT)  # 2's dense word-score table still loads


class IncompatibleModel(ValueError):
    """A model folder this version cannot read; the message says which version wrote it."""


@dataclass
class Batch:
    text: torch.Tensor
    image: torch.Tensor
    has_text: torch.Tensor
    has_image: torch.Tensor
    category: torch.Tensor | None = None  # [b] long, -1 unknown
    tags: torch.Tensor | None = None  # [b, n_tags] float multi-hot
    decoder_ids: torch.Tensor | None = None  # [b, L] long
    adversary: torch.Tensor | None = None  # [b] long, -1 unknown
    price: torch.Tensor | None = None  # [b] float, nan unknown
    lexical_ids: torch.Tensor | None = None  # [b, L] long, hashed words (models with a lexical branch)
    # [b, n_tags (+ n_categories)] cross-fitted SVM scores (training); else from the model's table
    word_scores: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with every tensor on `device` (the tagger's, for inference on a GPU)."""
        return Batch(**{f.name: None if (v := getattr(self, f.name)) is None else v.to(device, non_blocking=True)
                        for f in fields(self)})


@dataclass
class RawPrediction:
    """A batch's scores before any threshold."""

    category_probs: torch.Tensor  # [b, n_categories]
    tag_probs: torch.Tensor  # [b, n_tags] tag head
    fused: torch.Tensor  # [b, dim] the fused product vector
    modality_weights: torch.Tensor  # [b, 2] text, image
    generated: list[dict[str, float]] | None  # per product: generated tag -> probability (no floor)
    # [b, n_tags] the photo head's probabilities, NaN where the product shows no photo (models with one)
    photo_tag_probs: torch.Tensor | None = None


class Tagger(nn.Module):
    def __init__(self, cfg: ModelConfig, categories: list[str], tags: list[str], tokenizer=None,
                 adversary_classes: list[str] | None = None, required: dict[str, list[str]] | None = None,
                 required_exempt: dict[str, list[str]] | None = None):
        super().__init__()
        self.cfg, self.categories, self.tags = cfg, list(categories), list(tags)
        # keys answered for every product (tag_tokenizer.required_keys): {"*" or category: [key, ...]}
        self.required = {c: list(keys) for c, keys in (required or {}).items()}
        # {category: keys of required["*"] it does not answer} (tag_tokenizer.exempt_keys)
        self.required_exempt = {c: list(keys) for c, keys in (required_exempt or {}).items()}
        # a shop's own priors for the keys that must be answered, learned from its reviews (feedback/priors.py):
        # {fill source ("photo" or "head"): {key: {"temperature": T, "bias": {tag: b}}}}
        self.key_priors: dict[str, dict[str, dict]] = {}
        self._prior_vectors: dict[tuple[str, str], tuple[float, torch.Tensor]] = {}
        self._key_columns = {k: torch.tensor(cols) for k, cols in columns_by_key(self.tags).items()}
        self.lexical = LexicalEncoder(cfg.lexical_buckets, cfg.lexical_dim) if cfg.lexical_buckets else None
        ws = cfg.word_scores
        if ws.enabled and self.lexical is None:
            raise ValueError("word_scores reads the lexical branch's words: set lexical_buckets > 0 as well")
        if ws.categories and not ws.enabled:
            raise ValueError("word_scores.categories extends the word scores: set word_scores.enabled as well")
        # columns: one per tag, then (word_scores.categories) one per category
        n_scored = len(self.tags) + (len(self.categories) if ws.categories else 0)
        self.word_scores = WordScores(cfg.lexical_buckets, n_scored) if ws.enabled else None
        self.word_score_delta = nn.Parameter(torch.zeros(len(self.tags))) if ws.enabled and ws.per_tag else None
        text_width = (cfg.text_dim + (cfg.lexical_dim if self.lexical is not None else 0)
                      + (n_scored if self.word_scores is not None else 0))
        self.fusion = create_fusion(cfg.fusion, text_width, cfg.image_dim, cfg.dim, cfg.dropout)
        self.category_head = CategoryHead(cfg.dim, len(self.categories), cfg.dropout)
        self.tag_head = TagHead(cfg.dim, len(self.tags), cfg.dropout)
        self.register_buffer("thresholds", torch.full((len(self.tags),), 0.5))
        # generated tags below this probability are not reported (tuned on validation; 0 keeps all)
        self.register_buffer("decoder_threshold", torch.tensor(0.0))
        self.tokenizer = tokenizer
        self.decoder = TagDecoder(cfg.dim, tokenizer, cfg.decoder) if cfg.use_decoder and tokenizer is not None else None
        self.adversary_classes = list(adversary_classes or [])
        self.adversary = AdversaryHead(cfg.dim, len(self.adversary_classes)) if self.adversary_classes else None
        self.price_head = nn.Linear(cfg.dim, 1) if cfg.price_field else None
        single_valued = getattr(tokenizer, "single_valued", ())  # colour, gender, ...: their values compete
        self.photo_head = (PhotoHead(cfg.image_dim, len(self.tags), len(self.categories), cfg.dropout,
                                     value_groups=single_value_columns(self.tags, single_valued))
                           if cfg.photo_scores else None)

    # ---- forward and losses -------------------------------------------------------------------------
    def forward(self, batch: Batch, drop_modalities: bool = False) -> dict[str, torch.Tensor]:
        has_text, has_image = batch.has_text.bool(), batch.has_image.bool()
        if drop_modalities and self.training:
            has_text, has_image = modality_dropout(has_text, has_image, self.cfg.modality_dropout)
        text, tag_bias, category_bias = self._word_evidence(batch, has_text)
        out: dict[str, torch.Tensor] = {}
        if self.photo_head is not None:  # the photo's own evidence, per tag and per category
            out["photo_tag_logits"], out["photo_category_logits"] = self.photo_head(batch.image)
            photo_tags, photo_categories = self.photo_head.biases(out["photo_tag_logits"],
                                                                  out["photo_category_logits"], has_image)
            tag_bias = photo_tags if tag_bias is None else tag_bias + photo_tags
            category_bias = photo_categories if category_bias is None else category_bias + photo_categories
        fusion = self.fusion(text, batch.image, has_text, has_image)
        category_logits = self.category_head(fusion.fused)
        if category_bias is not None:
            category_logits = category_logits + category_bias.to(category_logits.dtype)
        out |= {"fused": fusion.fused, "modality_weights": fusion.weights, "tag_bias": tag_bias,
                "category_logits": category_logits, "tag_logits": self.tag_head(fusion.fused)}
        # Everything that needs gradients is computed inside forward, so DistributedDataParallel sees it.
        if self.training and self.decoder is not None and batch.decoder_ids is not None:
            out["decoder_loss"] = self.decoder(fusion.fused, batch.decoder_ids, tag_bias=tag_bias)
        if self.adversary is not None:
            out["adversary_logits"] = self.adversary(fusion.fused)
        if self.price_head is not None:
            out["price"] = self.price_head(fusion.fused)[:, 0]
        return out

    def _word_evidence(self, batch: Batch, has_text: torch.Tensor):
        """(text features with the lexical branch and word scores appended, the word scores' bias on the
        decoder's tag logits, their bias on the category logits); no word evidence where the text is hidden."""
        text, tag_bias, category_bias = batch.text, None, None
        if self.lexical is None:
            return text, tag_bias, category_bias
        if batch.lexical_ids is None:
            raise ValueError("this model has a lexical text branch: the batch needs lexical_ids")
        weights = self.lexical.tfidf(batch.lexical_ids)
        text = torch.cat([text, self.lexical(batch.lexical_ids, weights)], dim=-1)
        if self.word_scores is None:
            return text, tag_bias, category_bias
        scores = (batch.word_scores if batch.word_scores is not None  # cross-fitted, in training
                  else self.word_scores(batch.lexical_ids, weights))
        scores = scores.float() * has_text[:, None]
        text = torch.cat([text, scores.to(text.dtype)], dim=-1)
        n_tags = len(self.tags)
        tag_bias = self.cfg.word_scores.bias * scores[:, :n_tags]
        if self.word_score_delta is not None:
            tag_bias = tag_bias * (1 + self.word_score_delta)
        if self.cfg.word_scores.categories and self.cfg.word_scores.category_bias:
            category_bias = self.cfg.word_scores.category_bias * scores[:, n_tags:]
        return text, tag_bias, category_bias

    def losses(self, batch: Batch, out: dict[str, torch.Tensor], weights) -> dict[str, torch.Tensor]:
        """Per-objective losses (only those whose labels the batch has) and their weighted total."""
        losses: dict[str, torch.Tensor] = {}
        if batch.category is not None and (batch.category >= 0).any():
            losses["category"] = F.cross_entropy(out["category_logits"].float(), batch.category, ignore_index=-1,
                                                 label_smoothing=self.cfg.label_smoothing)
        if batch.tags is not None:
            losses["tags"] = tag_loss(out["tag_logits"].float(), batch.tags, self.cfg.tag_loss)
        if "decoder_loss" in out:
            losses["decoder"] = out["decoder_loss"]
        if "photo_tag_logits" in out:
            photo = photo_loss(out["photo_tag_logits"], out["photo_category_logits"], batch.tags, batch.category,
                               batch.has_image, (self.photo_head.group_index, self.photo_head.group_mask),
                               weights.photo_value_weight)
            if photo is not None:
                losses["photo"] = photo
        if "adversary_logits" in out and batch.adversary is not None and (batch.adversary >= 0).any():
            losses["adversary"] = F.cross_entropy(out["adversary_logits"].float(), batch.adversary, ignore_index=-1)
        if "price" in out and batch.price is not None and torch.isfinite(batch.price).any():
            ok = torch.isfinite(batch.price)
            losses["price"] = F.mse_loss(out["price"][ok].float(), batch.price[ok])
        w = {"category": weights.category_weight, "tags": weights.tag_weight, "decoder": weights.decoder_weight,
             "adversary": weights.adversary_weight, "price": weights.price_weight, "photo": weights.photo_weight}
        losses["total"] = sum(w[k] * v for k, v in losses.items())
        if weights.l1 > 0:  # sparse heads: L1 on the weights that read the fused vector
            losses["total"] = losses["total"] + weights.l1 * sum(
                h.linear.weight.abs().sum() for h in (self.category_head, self.tag_head))
        return losses

    # ---- prediction ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_raw(self, batch: Batch, generate: bool = True, stock_generate: bool = False) -> RawPrediction:
        """Every score the model has for a batch, before thresholds: what `predict` reports from, and
        what feedback calibrates (feedback/calibration.py). `stock_generate`: decode with transformers'
        own `generate` (TagDecoder.generate_stock, the reference path; same tags)."""
        self.eval()
        batch = batch.to(self.device)
        decode = None if self.decoder is None else (self.decoder.generate_stock if stock_generate
                                                    else self.decoder.generate)
        with self._autocast():
            out = self(batch)
            generated = decode(out["fused"], tag_bias=out["tag_bias"]) if (generate and decode) else None
        photo = None
        if "photo_tag_logits" in out:
            photo = torch.sigmoid(out["photo_tag_logits"].float())
            photo[~batch.has_image.bool()] = float("nan")
            photo = photo.cpu()
        return RawPrediction(torch.softmax(out["category_logits"].float(), -1).cpu(),
                             torch.sigmoid(out["tag_logits"].float()).cpu(), out["fused"].float().cpu(),
                             out["modality_weights"].float().cpu(),
                             None if generated is None else [dict(g) for g in generated], photo)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (inputs are moved there)."""
        return next(self.parameters()).device

    def _autocast(self):
        """bf16 autocast on a GPU (fp16 where it has none); nothing on a CPU, where the tagger's own layers
        are a small part of the work and float32 keeps its tags identical to the reference paths."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    @torch.no_grad()
    def predict(self, batch: Batch, generate: bool = True, top_k: int = 5) -> list[dict]:
        """Category (with score and top-k), tags from the tag head (thresholded), tags generated by the
        decoder (with their probabilities), and the modality weights, for every product of the batch."""
        return self.prediction_dicts(self.predict_raw(batch, generate), top_k)

    def prediction_dicts(self, raw: RawPrediction, top_k: int = 5, decoder_floor: float | None = None) -> list[dict]:
        """`predict`'s dicts from raw scores: the head's tags above their thresholds, generated tags at or
        above the decoder threshold (`decoder_floor` where another decoder generated them)."""
        cat_p, tag_p = raw.category_probs, raw.tag_probs
        top = cat_p.topk(min(top_k, cat_p.shape[-1]), dim=-1)
        # generated tags below it are not reported
        floor = float(self.decoder_threshold) if decoder_floor is None else decoder_floor
        thresholds = self.thresholds.cpu()  # raw scores are on the CPU (predict_raw), the model may not be
        preds = []
        for n in range(cat_p.shape[0]):
            above = (tag_p[n] >= thresholds).nonzero()[:, 0].tolist()
            near = ((tag_p[n] >= SUGGEST_FROM * thresholds) & (tag_p[n] < thresholds)).nonzero()[:, 0].tolist()
            near = sorted(near, key=lambda j: -float(tag_p[n, j]))[:MAX_SUGGESTED]
            pred = {"category": self.categories[int(top.indices[n, 0])], "category_score": float(top.values[n, 0]),
                    "category_top": [[self.categories[int(i)], float(v)] for i, v in zip(top.indices[n], top.values[n])],
                    "head_tags": {self.tags[j]: float(tag_p[n, j]) for j in above},
                    "suggested": {self.tags[j]: float(tag_p[n, j]) for j in near},
                    "thresholds": {self.tags[j]: float(thresholds[j]) for j in above + near},
                    "modality_weights": {"text": float(raw.modality_weights[n, 0]),
                                         "image": float(raw.modality_weights[n, 1])}}
            if raw.generated is not None:
                pred["generated_tags"] = {t: float(p) for t, p in raw.generated[n].items() if p >= floor}
            if self.required:
                pred["required"] = self.required_answers(pred["category"], *self.fill_probabilities(raw, n))
            preds.append(pred)
        return preds

    @staticmethod
    def fill_probabilities(raw: RawPrediction, n: int) -> tuple[torch.Tensor, str]:
        """The tag probabilities product `n` of a batch fills its required keys from, and their source:
        the photo head's where it has a photo (the best judge of what words leave out), else the tag head's."""
        photo = None if raw.photo_tag_probs is None else raw.photo_tag_probs[n]
        if photo is not None and not bool(torch.isnan(photo).any()):
            return photo, "photo"
        return raw.tag_probs[n], "head"

    def required_answers(self, category: str, tag_probs: torch.Tensor, source: str = "head") -> dict[str, list]:
        """{key: [its most probable tag, that probability]} for every key this category must answer, by
        `tag_probs` (from `source`, see fill_probabilities), through the shop's prior for that source and
        key where it has one (`key_priors`): what a prediction row reports where its tags say nothing of
        that key (inference/rows.py)."""
        exempt = set(self.required_exempt.get(category, ()))
        keys = dict.fromkeys([*(k for k in self.required.get(ALL_CATEGORIES, []) if k not in exempt),
                              *self.required.get(category, [])])
        out = {}
        for key in keys:
            cols = self._key_columns.get(key)
            if cols is None:
                continue
            probs = tag_probs[cols].float()
            prior = self._prior_vectors.get((source, key))
            if prior is not None:  # the shop's prior x the evidence (its share of the key), tempered
                temperature, bias = prior
                share = probs.clamp_min(1e-6) / probs.clamp_min(1e-6).sum()
                probs = torch.softmax(temperature * share.log() + bias, dim=0)
            i = int(probs.argmax())
            out[key] = [self.tags[int(cols[i])], float(probs[i])]
        return out

    def set_key_priors(self, priors: dict[str, dict[str, dict]]) -> None:
        """Set `key_priors` (keys or tags this model does not have are left out)."""
        self.key_priors, self._prior_vectors = {}, {}
        for source, by_key in priors.items():
            for key, prior in by_key.items():
                cols = self._key_columns.get(key)
                if cols is None:
                    continue
                known = {self.tags[int(j)]: float(prior["bias"][self.tags[int(j)]])
                         for j in cols if self.tags[int(j)] in prior["bias"]}
                temperature = float(prior["temperature"])
                self.key_priors.setdefault(source, {})[key] = {"temperature": temperature, "bias": known}
                # a value the prior does not name is never answered
                bias = torch.tensor([known.get(self.tags[int(j)], -30.0) for j in cols])
                self._prior_vectors[(source, key)] = (temperature, bias)

    def no_decay_parameters(self) -> set[str]:
        """Names of the parameters weight decay would only hurt: biases and norms (vectors), and GPT-2's
        position embeddings (looked up, not mixed)."""
        names = {n for n, p in self.named_parameters() if p.ndim < 2}
        if self.decoder is not None:
            names |= {f"decoder.{n}" for n in self.decoder.no_decay_parameters()}
        return names

    def tag_probabilities(self, batch: Batch) -> torch.Tensor:
        self.eval()
        with torch.no_grad(), self._autocast():
            return torch.sigmoid(self(batch.to(self.device))["tag_logits"].float()).cpu()

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, folder: str | Path, word_score_prune: float = PRUNE_BELOW) -> Path:
        """Write the model folder atomically (a temp folder renamed into place); word-score weights at or
        below `word_score_prune` are not stored (word_scores.pack_table)."""
        folder = Path(folder)
        tmp = temp_path(folder)
        tmp.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "model": to_dict(self.cfg), "categories": self.categories, "tags": self.tags,
                "adversary_classes": self.adversary_classes, "required_keys": self.required,
                "required_exempt": self.required_exempt,
                "key_priors": self.key_priors}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(_pack(_untie(state), word_score_prune), str(tmp / "model.safetensors"))
        if self.tokenizer is not None:
            save_tokenizer(self.tokenizer, tmp)
        swap_in_folder(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, map_location: str = "cpu") -> "Tagger":
        """Load a model folder; IncompatibleModel (naming the file) when it cannot be read as one."""
        folder = Path(folder)
        cfg, meta = _read_config(folder)
        tokenizer = load_tokenizer(folder) if (folder / "tag_tokenizer.json").exists() else None
        model = cls(cfg, meta["categories"], meta["tags"], tokenizer, meta.get("adversary_classes"),
                    meta.get("required_keys"), meta.get("required_exempt"))
        model.set_key_priors(meta.get("key_priors") or {})
        weights = folder / "model.safetensors"
        try:
            state = load_file(str(weights), device=map_location)
        except SafetensorError as e:  # truncated, or not a safetensors file
            raise IncompatibleModel(f"{weights} cannot be read ({e}); copy the model folder again or retrain") from None
        try:
            missing, unexpected = model.load_state_dict(_unpack(state, model.state_dict()), strict=False)
        except (RuntimeError, IndexError, ValueError) as e:  # a size differs: config.json edited, or other weights
            raise IncompatibleModel(f"{folder}: the weights do not fit config.json "
                                    f"({str(e).splitlines()[-1].strip()[:300]})") from None
        missing = [k for k in missing if not _is_tied(k)]
        if missing or unexpected:
            raise IncompatibleModel(f"{folder}: weights do not match the config (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]})")
        return model.eval()


def _read_config(folder: Path) -> tuple[ModelConfig, dict]:
    """The model config of a folder (bundled encoders resolved inside it) and the whole config.json."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        fmt = meta.get("format")
    except (ValueError, AttributeError) as e:
        raise IncompatibleModel(f"{cfg_path} is not a model config ({e})") from None
    if fmt not in READABLE:
        raise IncompatibleModel(f"{folder} was written as {fmt!r}; this version of "
                                f"multimodal_tags reads {FORMAT!r}. Retrain or use the version that wrote it.")
    try:
        cfg = model_config_from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise IncompatibleModel(f"{cfg_path}: the model config cannot be read ({e})") from None
    for side in ("text_encoder", "image_encoder"):  # encoders bundled in the folder: "hf:./text_encoder"
        spec = getattr(cfg, side)
        if spec.startswith("hf:./"):
            setattr(cfg, side, f"hf:{(folder / spec[len('hf:./'):]).resolve()}")
        elif "@./" in spec:  # a bundled weights file: "timm:ARCH@./image_encoder.safetensors"
            setattr(cfg, side, spec.replace("@./", f"@{folder.resolve()}/", 1))
    return cfg, meta


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (GPT-2 ties lm_head to wte): drop the tied copy."""
    return {k: v for k, v in state.items() if not k.endswith("gpt.lm_head.weight")}


_TABLE = "word_scores.weight"


def _pack(state: dict[str, torch.Tensor], prune: float) -> dict[str, torch.Tensor]:
    """The word-score table pruned and sparse (word_scores.pack_table); everything else as it is."""
    if _TABLE not in state:
        return state
    packed = pack_table(state.pop(_TABLE), prune)
    return state | {f"{_TABLE}.{part}": packed[part] for part in PACKED}


def _unpack(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo `_pack` (a folder of format 2 holds the dense table and passes through)."""
    parts = {part: state.pop(f"{_TABLE}.{part}") for part in PACKED if f"{_TABLE}.{part}" in state}
    if not parts:
        return state
    if len(parts) != len(PACKED) or _TABLE not in expected:
        raise IncompatibleModel(f"the packed word-score table is incomplete or unexpected (parts: {sorted(parts)})")
    return state | {_TABLE: unpack_table(parts, tuple(expected[_TABLE].shape))}


def _is_tied(key: str) -> bool:
    return key.endswith("gpt.lm_head.weight")


def build_tokenizer(cfg: ModelConfig, vocab: list[str], train_tags: list[list[str]]):
    """The decoder's tokenizer for this config: one token per tag, or BPE (trained, or GPT-2's)."""
    if not cfg.use_decoder:
        return None
    if cfg.tag_decoder == "closed":
        return TagTokenizer.fit(vocab, train_tags)
    if cfg.decoder.gpt2 == "scratch":
        return TextTagTokenizer.train(train_tags)
    return TextTagTokenizer.pretrained(cfg.decoder.gpt2, train_tags)


def decoder_targets(tokenizer, tag_lists: list[list[str]]) -> np.ndarray:
    """Padded [n, L] token ids for the decoder (L = longest sequence)."""
    seqs = [tokenizer.encode(t) for t in tag_lists]
    width = max(map(len, seqs)) if seqs else 2
    out = np.full((len(seqs), width), tokenizer.PAD, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def price_target(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return math.log1p(v) if v >= 0 else math.nan
