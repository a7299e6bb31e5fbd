"""`mmtags adapt`: fine-tune a model's tag head and decoder on feedback, mixed with a replay sample of
its original training data, into a new model folder; promote it only if it is not worse.

The judged products' labels are what feedback says: the tags it accepted or added, plus the stored
tags nobody rejected. A fixed slice of the judged products (by a hash of their ids) is held back.
Replayed training products keep their cross-fitted word scores, as in training, so the decoder does
not learn to trust word scores it could only have seen in-sample. The fusion and category head stay
frozen: feedback speaks of tags, not categories. The gate compares parent and child on the held-back
feedback and on the original validation split (tag micro-F1 of the tags the model serves, with a
paired bootstrap, and category accuracy); `--promote` records the child as the store's promoted model
only when it is not worse on either (see `_gate`). The new folder's `lineage.json` names its parent
and the feedback it learned from.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.catalog import Catalog, read_catalog
from ..data.schema import Product
from ..features.catalog_features import encode_catalog
from ..features.settings import RunConfig
from ..features.source import FeatureSource
from ..files import write_json_atomic
from ..inference.batch_tagger import model_id
from ..inference.predict import predict_source
from ..inference.rows import DEFAULT_TAG_SOURCE, prediction_rows, resolve_tag_source
from ..metrics import paired_f1_difference, prf
from ..run_info import LINEAGE_FILE as LINEAGE
from ..models.lm_decoder import FOLDER as LM_FOLDER
from ..models.tag_tokenizer import CATEGORY_KEY, tag_key
from ..models.tagger import Tagger
from ..train.data import FeatureDataset, LabelSpace
from ..train.finetune_text import bundle_text_encoder
from ..train.job import REPLAY_SETTINGS, copies_maker, replay_settings, split_datasets, split_indices
from ..train.loop import fit
from ..train.fit_word_scores import fit_or_load_word_scores
from .feedback_store import FeedbackStore
from .priors import learn_key_priors
from ..tagging.tag_store import TagStore

PROMOTED_KEY = "promoted_model"
TRAINABLE = ("tag_head.", "decoder.")
HEADS = ("tag_head.", "category_head.")  # the parameters AdaptConfig.head_lrs sets the rate of


@dataclass
class AdaptConfig:
    catalog: str | Path | None = None  # the original training catalog; default: the one the model records
    replay: float = 3.0  # replayed training products per judged product
    epochs: int = 3
    lr: float = 5e-5  # the decoder's (and fusion's); the heads' too where head_lrs is empty
    batch_size: int = 128
    holdout: float = 0.2  # fraction of judged products held back for the gate
    tolerance: float = 0.0  # extra slack on the gate (see _gate)
    promote: bool = False
    seed: int = 0
    tag_source: str = DEFAULT_TAG_SOURCE
    train_fusion: bool = False  # fine-tune the fusion head too (more capacity, more to forget)
    gate_val_limit: int | None = None  # the gate's validation products (None: the whole split; smoke tests: fewer)
    # One child per learning rate of the category and tag heads (the decoder stays at `lr`); kept: the
    # best on the held-back feedback among those that keep the original shop: its validation tag F1
    # falls by at most `forget_tolerance`, its category accuracy by at most `category_forget_tolerance`
    # (a new shop's categories move the old shop's boundaries a little: one point is the price allowed).
    # The shop the model was trained on needs the smallest step; a new shop a far larger one (docs/results.md).
    head_lrs: tuple[float, ...] = (5e-5, 1e-3, 5e-3)
    forget_tolerance: float = 0.005  # the most a review round may cost the original shop's tag F1 (issue 29)
    category_forget_tolerance: float = 0.01
    # the reviewed products' own value priors for the keys every product must answer (feedback/priors.py)
    shop_priors: bool = True


def training_catalog(model_dir: Path, given: str | Path | None) -> Path:
    """The catalog a model was trained on: given, recorded in its lineage, or the benchmark's beside it."""
    candidates = [Path(given)] if given else []
    lineage = model_dir / LINEAGE
    if lineage.exists():
        candidates.append(Path(json.loads(lineage.read_text(encoding="utf-8"))["catalog"]))
    candidates.append(model_dir.resolve().parent / "catalog.jsonl")
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(f"{model_dir} does not record its training catalog: pass --catalog "
                            "(the catalog it was trained on, for replay and the validation split)")


def replay_config(model_dir: Path) -> TrainConfig:
    """The settings the model's train split was built with (REPLAY_SETTINGS, from its lineage.json; the
    defaults for a folder that does not record them): replay rebuilds that split, masked copies included,
    so the word-score cross-fitting of training is found in the cache instead of fitted again."""
    lineage = model_dir / LINEAGE
    recorded = json.loads(lineage.read_text(encoding="utf-8")).get("train") or {} if lineage.exists() else {}
    return TrainConfig(**{k: v for k, v in recorded.items() if k in REPLAY_SETTINGS})


def judged_products(fb: FeedbackStore, categories: Sequence[str] = (),
                    judgements: dict[str, dict[str, bool]] | None = None) -> tuple[list[Product], float]:
    """Judged products whose content the store kept, labelled as feedback says (the category where an
    accepted or added `category:NAME` names one of `categories`, any case, else unknown; the category head
    learns from it), and the estimated rate of wrong judgements. A rejection of a tag the model proposed
    with probability above 1 - rate is more likely a slip than a correction (Bayes, with the model's
    probability as the prior), so the tag stays; with a careful reviewer the rate is near 0 and nothing is
    overruled. `judgements`: fb.judgements(), where the caller has read them already."""
    judgements = fb.judgements() if judgements is None else judgements
    kept = fb.tags.products(judgements)
    shown = {pid: (fb.tags.get(pid) or {"tags": {}})["tags"] for pid in kept}
    flip = judgement_error_rate([(v["score"], judgements[pid].get(t)) for pid in kept for t, v in shown[pid].items()])
    by_name = {c.lower(): c for c in categories}
    out = []
    for pid in sorted(kept):
        right = {t for t, ok in judgements[pid].items() if ok}
        wrong = {t for t, ok in judgements[pid].items() if not ok and shown[pid].get(t, {}).get("score", 0) <= 1 - flip}
        named = {by_name.get(t.split(":", 1)[1].strip().lower()) for t in right if tag_key(t) == CATEGORY_KEY} - {None}
        tags = {t for t in (set(shown[pid]) | right) - wrong if tag_key(t) != CATEGORY_KEY}
        out.append(dataclasses.replace(kept[pid], tags=sorted(tags), split=None,  # two categories judged right: unknown
                                       category=named.pop() if len(named) == 1 else None))
    return out, flip


def judgement_error_rate(judged: list[tuple[float, bool | None]], confident: float = 0.9) -> float:
    """How often judgements are wrong, from the proposals the model was confident of (probability >=
    `confident`): their rejection rate r against the rate w the model's own probabilities expect,
    r = e (1 - w) + (1 - e) w, so e = (r - w) / (1 - 2w), clipped to [0, 0.45] (as in confident learning)."""
    scores = [(p, ok) for p, ok in judged if ok is not None and p >= confident]
    if len(scores) < 50:  # too few to tell
        return 0.0
    rejected = sum(not ok for _, ok in scores) / len(scores)
    expected = sum(1 - p for p, _ in scores) / len(scores)
    return float(min(max((rejected - expected) / (1 - 2 * expected), 0.0), 0.45))


def held_back(product_id: str, fraction: float, seed: int) -> bool:
    """Whether a judged product belongs to the gate's slice (stable: a hash of its id)."""
    h = hashlib.sha256(f"{seed}:{product_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64 < fraction


def served_tags(model: Tagger, source: FeatureSource, tag_source: str) -> tuple[list[set[str]], list[str]]:
    """The tags a model serves for each product of a source, and its categories."""
    preds = predict_source(model, source, generate=tag_source != "head")
    rows = prediction_rows(source.products, preds, tag_source)
    return [set(r["tags"]) for r in rows], [r["category"] for r in rows]


@dataclass
class AdaptData:
    labels: LabelSpace
    train: FeatureDataset  # judged products (not held back) and the replayed training products
    holdout: FeatureDataset  # judged products held back for the gate
    val: FeatureSource  # the training catalog's validation split
    replayed: int

    @property
    def judged(self) -> FeatureSource:
        """The judged products adapt learns from (not held back): the first rows of `train`."""
        return self.train.features.subset(range(len(self.train) - self.replayed))


@torch.no_grad()
def _table_scores(model: Tagger, source: FeatureSource) -> torch.Tensor:
    ids = source.lexical_ids
    return model.word_scores(ids, model.lexical.tfidf(ids)).float()


def prepare_adapt_data(model: Tagger, catalog: Catalog, judged: list[Product], cache_dir: Path,
                       settings: RunConfig, options: AdaptConfig, tcfg: TrainConfig | None = None) -> AdaptData:
    """Features and labels of the judged products, a replay sample of the train split (built as `tcfg`,
    replay_config, says training built it), and val."""
    cfg, tcfg = model.cfg, tcfg or TrainConfig()
    labels = LabelSpace(model.categories, model.tags, model.tokenizer, model.adversary_classes, model.required,
                        model.required_exempt)
    catalog_source = encode_catalog(catalog, cfg, cache_dir, settings)
    idx = split_indices(catalog, tcfg.max_train_products)
    # the train split as training built it, masked copies included (only the word-score cache key needs them)
    copies = copies_maker(catalog, cfg, tcfg, cache_dir, settings) if model.word_scores is not None else None
    train_split = split_datasets(catalog, catalog_source, cfg, tcfg.max_train_products, copies_for=copies).train
    rng = np.random.default_rng(options.seed)
    fit_part = [p for p in judged if not held_back(p.id, options.holdout, options.seed)]
    held = [p for p in judged if held_back(p.id, options.holdout, options.seed)]
    pick = np.sort(rng.choice(len(idx["train"]), min(len(idx["train"]), round(options.replay * len(fit_part))),
                              replace=False))
    judged_source = encode_catalog(Catalog(fit_part + held, catalog.report, catalog.image_root, catalog.meta),
                                   cfg, cache_dir, settings)
    mixed = judged_source.subset(range(len(fit_part))).concat(train_split.features.subset(pick.tolist()))
    if model.word_scores is not None:  # judged: the model's table (out of sample); replayed: cross-fitted
        n_categories = len(model.categories) if cfg.word_scores.categories else 0
        crossfit = fit_or_load_word_scores(train_split, cfg.lexical_buckets, tcfg, cache_dir,
                                           settings.log, n_categories)["scores"]
        mixed.word_scores = torch.cat([_table_scores(model, mixed.subset(range(len(fit_part)))),
                                       torch.from_numpy(crossfit[pick]).float()])
    holdout = judged_source.subset(range(len(fit_part), len(fit_part) + len(held)))
    return AdaptData(labels, FeatureDataset(mixed, labels, cfg), FeatureDataset(holdout, labels, cfg),
                     catalog_source.subset(idx["val"][:options.gate_val_limit]), len(pick))


def _freeze_all_but_tags(model: Tagger, train_fusion: bool, train_category: bool = False) -> None:
    trainable = TRAINABLE + (("fusion.",) if train_fusion else ()) + (("category_head.",) if train_category else ())
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(trainable)


def _fine_tune(model_dir: Path, data: AdaptData, options: AdaptConfig, work: Path, log,
               train_category: bool = False, head_lr: float | None = None) -> Tagger:
    child = Tagger.load(model_dir)
    _freeze_all_but_tags(child, options.train_fusion, train_category)
    # a short fixed schedule: the last epoch is kept ("epoch" always improves); the gate then decides
    tcfg = TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, warmup_ratio=0.1,
                       lr_by_prefix={prefix: head_lr for prefix in HEADS} if head_lr else None,
                       patience=options.epochs, seed=options.seed, checkpoint_every=options.epochs, monitor="epoch")
    fit(child, data.train, data.holdout, tcfg, work, log=log)
    return Tagger.load(work / "best_model")


@torch.no_grad()
def keep_parent_evidence(child: Tagger, parent: Tagger, priors: dict) -> None:
    """Give the child the parent's tag-head rows for the values of every key with a shop prior read from
    the tag head (feedback/priors.py): that prior was fitted on the parent's evidence, so the child must
    weigh the same evidence (with the fusion frozen, the same rows give the same probabilities); the
    shop's knowledge of those keys is then the prior's, not learned twice."""
    keys = set(priors.get("head", {}))
    rows = [j for j, t in enumerate(child.tags) if tag_key(t) in keys]
    if rows:
        child.tag_head.linear.weight[rows] = parent.tag_head.linear.weight[rows]
        child.tag_head.linear.bias[rows] = parent.tag_head.linear.bias[rows]


def _gate_sets(data: AdaptData) -> tuple[tuple[str, FeatureSource], ...]:
    return ("feedback_holdout", data.holdout.features), ("val", data.val)


def _served_on_gate_sets(model: Tagger, data: AdaptData, tag_source: str) -> dict[str, tuple[list, list]]:
    """The model's served tags and categories on each of the gate's product sets."""
    return {name: served_tags(model, source, tag_source) for name, source in _gate_sets(data)}


def _gate(parent: dict[str, tuple[list, list]], child: Tagger, data: AdaptData, tag_source: str,
          tolerance: float) -> dict:
    """Both models on the held-back feedback and on val (`parent`: the parent's `_served_on_gate_sets`,
    made once for every child). The child passes where it is not worse beyond noise: the 95th percentile
    of the paired-bootstrap F1 difference (child - parent) is >= -tolerance, and its val category accuracy
    is not lower (by more than `tolerance`). A zero-slack comparison on a few hundred held-back products
    would reject a better model about as often as a worse one."""
    gate: dict = {}
    for name, source in _gate_sets(data):
        gold = [set(p.tags) for p in source.products]
        (p_tags, p_cats), (c_tags, c_cats) = parent[name], served_tags(child, source, tag_source)
        known = [i for i, p in enumerate(source.products) if p.category]
        accuracy = [sum(cats[i] == source.products[i].category for i in known) / len(known) if known else None
                    for cats in (p_cats, c_cats)]
        gate[name] = {"products": len(source), "parent_tag_f1": prf(gold, p_tags)[2],
                      "adapted_tag_f1": prf(gold, c_tags)[2],
                      "f1_difference": paired_f1_difference(gold, p_tags, c_tags),
                      "parent_accuracy": accuracy[0], "adapted_accuracy": accuracy[1]}
    val = gate["val"]
    gate["passed"] = (len(data.holdout) > 0
                      and all(gate[n]["f1_difference"]["high"] >= -tolerance for n in ("feedback_holdout", "val"))
                      and not (val["parent_accuracy"] is not None
                               and val["adapted_accuracy"] < val["parent_accuracy"] - tolerance))
    return gate


def _save_child(child: Tagger, model_dir: Path, out: Path, fusion_trained: bool, log) -> None:
    child.save(out)
    bundled = model_dir / "text_encoder"
    if bundled.is_dir() and child.cfg.text_encoder == f"hf:{bundled.resolve()}":
        bundle_text_encoder(bundled, out)  # self-contained, like its parent
    lm = model_dir / LM_FOLDER
    if not lm.is_dir():
        return
    if fusion_trained:  # the LM decoder's mapper reads fused vectors that the child computes differently
        log(f"adapt: {lm} was trained on the parent's fused vectors, which the child's fusion changed: it is not "
            f"carried over; retrain it with `mmtags train-decoder --model {out}`")
    else:  # encoders, word scores and fusion are the parent's: the same fused vectors, the same LM decoder
        shutil.copytree(lm, out / LM_FOLDER)


def _fine_tune_and_choose(model_dir: Path, parent: Tagger, data: AdaptData, options: AdaptConfig, tag_source: str,
                          work_root: Path, log, train_category: bool, priors: dict) -> tuple[Tagger, dict, list[dict]]:
    """A child per head learning rate of `options.head_lrs` (or one at `options.lr`), each with the shop's
    key `priors` and gated; the one kept (see AdaptConfig.head_lrs), its gate, and what each rate gave."""
    tried, kept = [], None  # kept: (index in tried, child, gate)
    served = _served_on_gate_sets(parent, data, tag_source)  # the parent's side of every gate
    for i, head_lr in enumerate(options.head_lrs or (None,)):
        with tempfile.TemporaryDirectory(dir=work_root, prefix=".adapt-") as work:
            # the category head learns too where reviewers judged categories (`category:` tags)
            child = _fine_tune(model_dir, data, options, Path(work), log, train_category, head_lr)
        child.set_key_priors(priors)
        if not options.train_fusion:
            keep_parent_evidence(child, parent, priors)
        gate = _gate(served, child, data, tag_source, options.tolerance)
        tried.append(_rate_entry(head_lr or options.lr, gate, options))
        log(f"adapt: heads at {tried[-1]['head_lr']:g}: held-back tag F1 + category accuracy "
            f"{tried[-1]['holdout_score']:.4f}, validation tag F1 {tried[-1]['val_tag_f1_change']:+.4f}, category "
            f"accuracy {tried[-1]['val_accuracy_change']:+.4f}{' (forgets)' if tried[-1]['forgets'] else ''}")
        if kept is None or _better(tried[-1], tried[kept[0]]):
            kept = (i, child, gate)
    for i, t in enumerate(tried):
        t["kept"] = i == kept[0]
    return kept[1], kept[2], tried


def _rate_entry(head_lr: float, gate: dict, options: AdaptConfig) -> dict:
    held, val = gate["feedback_holdout"], gate["val"]
    tags = val["adapted_tag_f1"] - val["parent_tag_f1"]
    accuracy = (val["adapted_accuracy"] or 0.0) - (val["parent_accuracy"] or 0.0)
    return {"head_lr": head_lr, "holdout_score": round(held["adapted_tag_f1"] + (held["adapted_accuracy"] or 0.0), 5),
            "val_tag_f1_change": round(tags, 5), "val_accuracy_change": round(accuracy, 5),
            "forgets": tags < -options.forget_tolerance or accuracy < -options.category_forget_tolerance}


def _better(new: dict, old: dict) -> bool:
    """A child that keeps the original shop beats one that forgets it; among those that keep it, the higher
    held-back score; among those that forget, the one that forgets less."""
    if new["forgets"] != old["forgets"]:
        return not new["forgets"]
    if new["forgets"]:
        return (min(new["val_tag_f1_change"], new["val_accuracy_change"])
                > min(old["val_tag_f1_change"], old["val_accuracy_change"]))
    return new["holdout_score"] > old["holdout_score"]


def adapt_model(model_dir: str | Path, store_path: str | Path, out: str | Path, settings: RunConfig | None = None,
                options: AdaptConfig | None = None) -> dict:
    """Fine-tune on feedback into `out`, gate it, promote it if asked and it passed; returns the lineage."""
    settings, options = settings or RunConfig(), options or AdaptConfig()
    model_dir, out, t0 = Path(model_dir), Path(out), time.perf_counter()
    parent = Tagger.load(model_dir)
    tag_source = resolve_tag_source(options.tag_source, parent.decoder is not None, str(model_dir))
    catalog_path = training_catalog(model_dir, options.catalog)
    with FeedbackStore(store_path) as fb:
        judgements, events, last_seq = fb.judgements(), fb.count(), fb.last_seq()
        judged, flip = judged_products(fb, parent.categories, judgements)
    reviewed = {pid: {tag_key(t) for t in tags} for pid, tags in judgements.items()}  # the keys reviewers judged
    if not judged:
        raise ValueError(f"{store_path} holds no feedback on products it kept: nothing to adapt to")
    tcfg = replay_config(model_dir)
    data = prepare_adapt_data(parent, read_catalog(catalog_path), judged, settings.cache_for(catalog_path), settings,
                              options, tcfg)
    if len(data.holdout) == 0:  # the gate compares parent and child on them: without any, nothing can pass
        raise ValueError(f"{store_path}: {len(judged)} judged product(s), none held back for the gate (a share of "
                         f"{options.holdout:g} of them is): judge more products before adapting")
    settings.log(f"adapt: {len(data.train) - data.replayed} judged + {data.replayed} replayed products, "
                 f"{len(data.holdout)} held back")
    out.parent.mkdir(parents=True, exist_ok=True)
    # the shop's priors of the keys its reviewers judged, through the parent (out of sample)
    priors = learn_key_priors(parent, data.judged, reviewed) if options.shop_priors else {}
    child, gate, tried = _fine_tune_and_choose(model_dir, parent, data, options, tag_source, out.parent,
                                               settings.log, any(p.category for p in judged), priors)
    _save_child(child, model_dir, out, options.train_fusion, settings.log)
    lineage = {"parent": {"path": str(model_dir.resolve()), "model_id": model_id(model_dir)},
               "ancestors": _ancestors(model_dir), "catalog": str(catalog_path.resolve()),
               "train": replay_settings(tcfg),
               "feedback": {"store": str(Path(store_path).resolve()), "events": events, "last_seq": last_seq,
                            "judged_products": len(judged), "held_back": len(data.holdout),
                            "estimated_judgement_error_rate": flip,
                            "replayed": data.replayed},
               "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()},
               "gate": gate, "learning_rates": tried, "promoted": bool(options.promote and gate["passed"]),
               "key_priors": child.key_priors,
               "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(out / LINEAGE, lineage)
    if lineage["promoted"]:
        with FeedbackStore(store_path) as fb:
            fb.tags.set_meta(PROMOTED_KEY, str(out.resolve()))
    return lineage


def _ancestors(model_dir: Path) -> list[str]:
    lineage = model_dir / LINEAGE
    if not lineage.exists():
        return []
    meta = json.loads(lineage.read_text(encoding="utf-8"))
    return [meta["parent"]["path"], *meta.get("ancestors", [])] if meta.get("parent") else []


def promoted_model(store_path: str | Path) -> Path | None:
    """The model folder last promoted for this store, if any."""
    with TagStore(store_path) as store:
        value = store.get_meta(PROMOTED_KEY)
    return Path(value) if value else None
