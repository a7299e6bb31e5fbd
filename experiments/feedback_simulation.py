"""Feedback simulation on fashion-myntra: does the tagger get better from reviewers' judgements?

    python experiments/feedback_simulation.py --data ../shared/datasets/fashion-myntra --model MODEL_DIR --out OUT

A simulated reviewer walks a fixed shuffle of the validation products and judges the tags the model
proposes against the true labels: accepts right tags, rejects wrong ones, adds missed ones (with
--noise, a fraction of judgements is flipped: accept <-> reject, an add left out). After 500, 1,000,
2,000 and all 4,379 judged products it reports test tag micro-F1 and the acceptance rate of proposed
test tags (judged by a noise-free reviewer) for: the model before feedback, after immediate
adaptation (feedback/calibration.py, seconds) and after `adapt` (fine-tuned heads and decoder); and
the same with 10% of judgements flipped. The "new tag" case trains a model that never saw one
frequent tag (experiments/feedback_model.py) and teaches it the tag through `add` events alone.
Writes OUT/results.json, OUT/results.md and OUT/feedback_curves.png.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import pickle
import random
import time
from pathlib import Path

from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.features import RunConfig
from multimodal_tags.files import remove_sqlite
from multimodal_tags.inference.batch_tagger import BatchTagger
from multimodal_tags.metrics import paired_f1_difference, prf
from multimodal_tags.feedback.adapt import AdaptConfig, adapt_model
from multimodal_tags.feedback.events import FeedbackEvent
from multimodal_tags.feedback.feedback_store import FeedbackStore
from multimodal_tags.feedback.learner import LearningTagger, to_scores

from experiments.common import benchmark_catalog, default_cache, markdown_table
from experiments.feedback_model import train_without_tag

STEPS = (500, 1000, 2000, 4379)
HEADLINE = 2000  # the scalar results are after this many judged products
NEW_TAG_EVENTS = (25, 50, 100, 200)
BATCH = 256


def judge(product, proposed: list[str], rng: random.Random, noise: float) -> list[tuple[str, str]]:
    """(tag, action) of a reviewer who knows the product's true tags; `noise` flips judgements."""
    true = set(product.tags)
    out = []
    for tag in proposed:
        right = tag in true
        if rng.random() < noise:
            right = not right
        out.append((tag, "accept" if right else "reject"))
    for tag in sorted(true - set(proposed)):
        if rng.random() >= noise:
            out.append((tag, "add"))
    return out


def acceptance(products, rows) -> float:
    """Accepted / judged over the proposed tags of `rows`, judged without noise."""
    judged = sum(len(r["tags"]) for r in rows)
    accepted = sum(len(set(r["tags"]) & set(p.tags)) for p, r in zip(products, rows))
    return accepted / max(judged, 1)


def f1(products, rows, tags: set[str] | None = None) -> float:
    """Micro-F1 of the rows' tags (only `tags`, when given)."""
    keep = (lambda s: s & tags) if tags else (lambda s: s)
    return prf([keep(set(p.tags)) for p in products], [keep(set(r["tags"])) for r in rows])[2]


class Scored:
    """A split's base rows and scores under one model, computed once (kept in OUT/scores/ for reruns);
    calibrations are applied to copies."""

    def __init__(self, tagger: BatchTagger, products, image_root: Path, keep: Path | None = None):
        self.products, self.rows, self.scores = products, [], []
        if keep is not None and keep.exists():
            self.rows, self.scores = pickle.loads(keep.read_bytes())
            return
        for i in range(0, len(products), BATCH):
            rows, raw = tagger.tag_raw(products[i:i + BATCH], image_root)
            self.rows += rows
            self.scores += to_scores(raw)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_bytes(pickle.dumps((self.rows, self.scores)))

    @classmethod
    def splits(cls, tagger: BatchTagger, split: dict, out: Path) -> dict:
        """Val and test, scored once per model and split order."""
        ids = hashlib.sha256("".join(p.id for p in split["val"] + split["test"]).encode()).hexdigest()[:12]
        return {k: cls(tagger, split[k], split["root"], out / "scores" / f"{tagger.model_id}-{ids}-{k}.pkl")
                for k in ("val", "test")}

    def adapted(self, learner: LearningTagger) -> list[dict]:
        return [learner.calibration.apply(copy.deepcopy(r), s, learner.vocab_index)
                for r, s in zip(self.rows, self.scores)]


def send(fb: FeedbackStore, products, rows, rng, noise: float, model_id: str, start: int) -> int:
    """The reviewer's events for these products, stored; returns how many."""
    events = []
    for p, r in zip(products, rows):
        for tag, action in judge(p, r["tags"], rng, noise):
            events.append(FeedbackEvent(event_id=f"sim-{start + len(events)}", user="reviewer", product=p.id,
                                        tag=tag, action=action, model_id=model_id))
    result = fb.add(events)
    assert not result.refused, result.refused[:3]
    return result.stored


def fresh_store(path: Path) -> FeedbackStore:
    remove_sqlite(path)
    return FeedbackStore(path)


def _evaluate_adapted(model_dir: Path, test, cache: Path, image_root: Path, before: list[dict]) -> dict:
    """Test F1 and acceptance of an adapted model, and its F1 difference to `before` (paired bootstrap)."""
    tagger = BatchTagger(model_dir, cache, RunConfig(cache_dir=cache, progress=False))
    rows = [r for i in range(0, len(test), BATCH) for r in tagger.tag(test[i:i + BATCH], image_root)]
    gold = [set(p.tags) for p in test]
    diff = paired_f1_difference(gold, [set(r["tags"]) for r in before], [set(r["tags"]) for r in rows])
    return {"f1_adapted": f1(test, rows), "acceptance_adapted": acceptance(test, rows), "adapted_vs_before": diff}


def run_stream(model_dir: Path, catalog: Path, cache: Path, out: Path, noise: float, split: dict,
               scored: dict, adapt_at: set[int], log) -> list[dict]:
    """One reviewer's stream: feedback after each step, immediate adaptation, and `adapt` at `adapt_at`."""
    name = f"noise{noise:g}"
    fb = fresh_store(out / f"store-{name}.db")
    settings = RunConfig(cache_dir=cache, progress=False, log=lambda s: None)
    learner = LearningTagger(BatchTagger(model_dir, cache, settings), fb, split["root"])
    val, test = split["val"], split["test"]
    fb.tags.write(scored["val"].rows, {}, val)  # the store knows the products the reviewer judges
    learner.remember(val, scored["val"].scores)
    rng, curve, start, sent = random.Random(1), [], 0, 0
    for n in STEPS:
        sent += send(fb, val[start:n], scored["val"].rows[start:n], rng, noise, learner.model_id, sent)
        start, t0 = n, time.perf_counter()
        cal = learner.refit()
        rows = scored["test"].adapted(learner)
        entry = {"judged": n, "events": sent, "refit_s": round(time.perf_counter() - t0, 2),
                 "rules": len(cal.rules), "f1_immediate": f1(test, rows), "acceptance_immediate": acceptance(test, rows)}
        if n in adapt_at:
            lineage = adapt_model(model_dir, fb.tags.path, out / f"adapted-{name}-{n}", settings,
                                  AdaptConfig(catalog=catalog))
            entry.update(_evaluate_adapted(out / f"adapted-{name}-{n}", test, cache, split["root"],
                                           scored["test"].rows))
            entry["adapt_gate_passed"], entry["adapt_s"] = lineage["gate"]["passed"], lineage["seconds"]
        log(json.dumps(entry))
        curve.append(entry)
    fb.close()
    return curve


def new_tag_case(model_dir: Path, cache: Path, out: Path, tag: str, split: dict, log) -> dict[int, float]:
    """Test F1 of `tag`, unknown to the model, after each count of `add` events for it."""
    tagger = BatchTagger(model_dir, cache, RunConfig(cache_dir=cache, progress=False, log=lambda s: None))
    if tag in tagger.model.tags:
        raise SystemExit(f"{model_dir} knows {tag!r} already: the new-tag case needs a model trained without it")
    val, test = split["val"], split["test"]
    scored = Scored.splits(tagger, split, out)
    fb = fresh_store(out / "store-new-tag.db")
    learner = LearningTagger(tagger, fb, split["root"])
    fb.tags.write(scored["val"].rows, {}, val)
    learner.remember(val, scored["val"].scores)
    rng, results, start, sent, adds = random.Random(2), {}, 0, 0, 0
    for target in NEW_TAG_EVENTS:
        end = start
        while adds < target and end < len(val):
            adds += tag in val[end].tags
            end += 1
        sent += send(fb, val[start:end], scored["val"].rows[start:end], rng, 0.0, learner.model_id, sent)
        start = end
        learner.refit()
        results[target] = f1(test, scored["test"].adapted(learner), {tag})
        log(f"new tag {tag!r}: {adds} add events over {end} judged products -> test F1 {results[target]:.4f}")
    fb.close()
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="fashion-myntra (used when MODEL_DIR has no catalog beside it)")
    ap.add_argument("--model", type=Path, required=True, help="the benchmark's model/ folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="feature cache (default: the benchmark's, beside MODEL_DIR)")
    ap.add_argument("--noise", type=float, default=0.1, help="fraction of judgements flipped in the noisy stream")
    ap.add_argument("--adapt-steps", default="500,1000,2000,4379", help="judged-product counts to run `adapt` at")
    ap.add_argument("--new-tag", default="sleeve length:short sleeves")
    ap.add_argument("--skip-new-tag", action="store_true")
    return ap.parse_args(argv)


def split_ids(catalog: Path) -> dict:
    cat = read_catalog(catalog)
    val = [p for p in cat.products if p.split == "val"]
    random.Random(0).shuffle(val)  # the reviewer's stream
    return {"val": val, "test": [p for p in cat.products if p.split == "test"], "root": cat.image_root}


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    log_file = open(a.out / "feedback_simulation.log", "a", encoding="utf-8")

    def log(s: str) -> None:
        print(s, flush=True)
        log_file.write(s + "\n")
        log_file.flush()

    catalog = benchmark_catalog(a.model, a.data, a.out, log)
    cache = a.cache or default_cache(a.model, catalog)
    split = split_ids(catalog)
    tagger = BatchTagger(a.model, cache, RunConfig(cache_dir=cache, progress=False, log=lambda s: None))
    scored = Scored.splits(tagger, split, a.out)
    before = {"f1": f1(split["test"], scored["test"].rows), "acceptance": acceptance(split["test"], scored["test"].rows)}
    log(f"before feedback: test tag micro-F1 {before['f1']:.4f}, acceptance {before['acceptance']:.4f}")
    adapt_at = {int(x) for x in a.adapt_steps.split(",") if x}
    curves = {"clean": run_stream(a.model, catalog, cache, a.out, 0.0, split, scored, adapt_at, log),
              "noisy": run_stream(a.model, catalog, cache, a.out, a.noise, split, scored, adapt_at & {HEADLINE}, log)}
    new_tag = {} if a.skip_new_tag else new_tag_case(
        train_without_tag(a.model, catalog, a.new_tag, a.out, cache, log), cache, a.out, a.new_tag, split, log)
    results = summarise(before, curves, new_tag, a)
    results["new_tag_f1_of_a_model_trained_with_it"] = f1(split["test"], scored["test"].rows, {a.new_tag})
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (a.out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot(results, a.out / "feedback_curves.png")
    log(markdown(results))
    return results


def _at(curve: list[dict], n: int, key: str):
    return next((e.get(key) for e in curve if e["judged"] == n), None)


def summarise(before: dict, curves: dict, new_tag: dict, a) -> dict:
    clean, noisy = curves["clean"], curves["noisy"]
    return {"f1_before": before["f1"], "acceptance_before": before["acceptance"], "headline_judged": HEADLINE,
            "f1_immediate": _at(clean, HEADLINE, "f1_immediate"), "f1_adapted": _at(clean, HEADLINE, "f1_adapted"),
            "f1_immediate_noisy": _at(noisy, HEADLINE, "f1_immediate"),
            "f1_adapted_noisy": _at(noisy, HEADLINE, "f1_adapted"),
            "f1_adapted_vs_before": _at(clean, HEADLINE, "adapted_vs_before"),
            "f1_adapted_noisy_vs_before": _at(noisy, HEADLINE, "adapted_vs_before"),
            "adapt_gate_passed": _at(clean, HEADLINE, "adapt_gate_passed"),
            # acceptance is what the immediate, per-tag adaptation tunes; adapt trades for F1 (reported too)
            "acceptance_after": _at(clean, HEADLINE, "acceptance_immediate"),
            "acceptance_adapted": _at(clean, HEADLINE, "acceptance_adapted"),
            "new_tag": a.new_tag, "new_tag_f1": new_tag, "noise": a.noise, "curves": curves}


def markdown(r: dict) -> str:
    """The curves of `r` (both runs side by side) and the new tag's F1, as markdown."""
    flipped = f"{r['noise']:.0%} flipped"
    noisy = {e["judged"]: e for e in r["curves"]["noisy"]}
    rows = [{"judged val products": e["judged"], "events": e["events"], "F1 immediate": e["f1_immediate"],
             "F1 after adapt": e.get("f1_adapted"),
             f"F1 immediate, {flipped}": noisy.get(e["judged"], {}).get("f1_immediate"),
             f"F1 after adapt, {flipped}": noisy.get(e["judged"], {}).get("f1_adapted"),
             "acceptance immediate": e["acceptance_immediate"], "acceptance after adapt": e.get("acceptance_adapted"),
             "refit s": e["refit_s"]} for e in r["curves"]["clean"]]
    lines = [f"Test tag micro-F1 / acceptance rate of proposed test tags; before feedback: F1 {r['f1_before']:.4f}, "
             f"acceptance {r['acceptance_before']:.4f}.", "", markdown_table(rows, {"refit s": 2})]
    if r["new_tag_f1"]:
        taught = [{"add events": k, "test F1 of the tag": v} for k, v in r["new_tag_f1"].items()]
        taught.append({"add events": "(the benchmark model, trained with the tag)",
                       "test F1 of the tag": r["new_tag_f1_of_a_model_trained_with_it"]})
        lines += ["", f"New tag `{r['new_tag']}` (never seen in training), taught by `add` events only:", "",
                  markdown_table(taught)]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name, curve in r["curves"].items():
        xs = [e["judged"] for e in curve]
        ax.plot(xs, [e["f1_immediate"] for e in curve], marker="o", label=f"immediate ({name})")
        pts = [(e["judged"], e["f1_adapted"]) for e in curve if e.get("f1_adapted") is not None]
        if pts:
            ax.plot(*zip(*pts), marker="s", linestyle="--", label=f"after adapt ({name})")
    ax.axhline(r["f1_before"], color="grey", linestyle=":", label="before feedback")
    ax.set(xlabel="judged validation products", ylabel="test tag micro-F1", title="Learning from feedback")
    ax.legend(fontsize=8)
    if r["new_tag_f1"]:
        ks = list(r["new_tag_f1"])
        axes[1].plot([int(k) for k in ks], [r["new_tag_f1"][k] for k in ks], marker="o")
    axes[1].set(xlabel="add events", ylabel="test F1", title=f"new tag: {r['new_tag']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
