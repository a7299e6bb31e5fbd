"""Feedback: events and their validation, the feedback store, immediate adaptation, `adapt` and its gate."""
import json

import numpy as np
import pytest
import torch

from conftest import SETTINGS, write_jsonl
from multimodal_tags.cli import main
from multimodal_tags.inference.batch_tagger import BatchTagger
from multimodal_tags.feedback.adapt import AdaptConfig, adapt_model, promoted_model
from multimodal_tags.feedback.calibration import NEVER, Scores, TagRule, fit_calibration
from multimodal_tags.feedback.events import FeedbackEvent, parse_event
from multimodal_tags.feedback.feedback_store import FeedbackStore
from multimodal_tags.feedback.learner import LearningTagger
from multimodal_tags.tagging.tag_store import TagStore

def store_copy(shop, tmp_path):
    path = tmp_path / "tags.db"
    with TagStore(shop["root"] / "tags.db") as src:
        src.db.execute(f"VACUUM INTO '{path}'")
    return path


def _event(i, product, tag, action="accept", **kw):
    return FeedbackEvent(event_id=f"e{i}", user="u1", product=product, tag=tag, action=action, **kw)


# ---- events -------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, field", [
    ({"event_id": "1", "user": "u", "product": "p", "tag": "colour:red", "action": "like"}, "action"),
    ({"event_id": "1", "user": "u", "product": "p", "tag": "colour:red", "action": "add", "time": "yesterday"}, "time"),
    ({"event_id": "1", "user": "u", "product": "p", "tag": "x" * 201, "action": "add"}, "tag"),
    ({"event_id": "1", "user": "u", "product": "p", "tag": " ", "action": "add"}, "tag"),
    ({"event_id": "1", "user": "u", "product": ["p"], "tag": "t", "action": "add"}, "product"),
    ({"user": "u", "product": "p", "tag": "t", "action": "add"}, "event_id"),
    ({"event_id": "1", "user": "u\ud800", "product": "p", "tag": "t", "action": "add"}, "user"),
    ({"event_id": "1", "user": "u", "product": "p", "tag": "t", "action": "add", "model_id": "m\x00"}, "model_id"),
])
def test_a_bad_event_is_refused_naming_its_field(raw, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        parse_event(raw)


def test_times_parse_as_iso_or_unix_and_unknown_fields_are_refused():
    a = parse_event({"event_id": "1", "user": "u", "product": 7, "tag": "t", "action": "add",
                     "time": "2026-11-27T10:00:00"})
    b = parse_event({"event_id": "2", "user": "u", "product": "7", "tag": "t", "action": "add", "time": 1795773600})
    assert a.product == "7" and a.unix_time(0) == b.unix_time(0) == 1795773600.0
    with pytest.raises(ValueError, match="^screen: Extra inputs are not permitted"):
        parse_event({"event_id": "3", "user": "u", "product": "7", "tag": "t", "action": "add", "screen": "x" * 10**6})


def test_import_stores_good_rows_refuses_bad_ones_by_row_and_is_idempotent(shop, tmp_path, capsys):
    store = store_copy(shop, tmp_path)
    pid = shop["val"][0].id
    rows = [{"event_id": "a", "user": "u", "product": pid, "tag": "colour:red", "action": "reject"},
            {"event_id": "b", "user": "u", "product": "no-such-product", "tag": "colour:red", "action": "add"},
            {"event_id": "c", "user": "u", "product": pid, "tag": "colour:red", "action": "maybe"},
            {"event_id": "d", "user": "u", "product": pid, "tag": "colour:blue", "action": "add", "time": "soon"}]
    events = write_jsonl(tmp_path / "events.jsonl", rows)
    with open(events, "a") as f:
        f.write("{not json\n")
    assert main(["feedback", "import", str(events), "--store", str(store)]) == 0
    out, err = capsys.readouterr()
    assert "stored 1, duplicates 0, refused 4" in out
    assert f"{events}:2: product: unknown product 'no-such-product'" in err
    assert f"{events}:3: action:" in err and f"{events}:4: time:" in err and f"{events}:5: not JSON" in err
    assert main(["feedback", "import", str(events), "--store", str(store)]) == 0  # delivered again
    assert "stored 0, duplicates 1" in capsys.readouterr().out
    with FeedbackStore(store) as fb:
        assert fb.count() == 1
        from multimodal_tags.personal.profiles import Profiles
        assert Profiles(fb.tags).raw("u")["colour:red"] == pytest.approx(-0.5, abs=1e-3)  # counted once
        changed = fb.add([FeedbackEvent(event_id="a", user="u", product=pid, tag="colour:red", action="accept")])
        assert changed.stored == 0 and "stored before with other content" in changed.refused[0][1]


def test_stats_count_acceptance_per_key_and_ignore_adds(shop, tmp_path, capsys):
    pid, store = shop["val"][0].id, store_copy(shop, tmp_path)
    with FeedbackStore(store) as fb:
        fb.add([_event(1, pid, "colour:red"), _event(2, pid, "colour:blue", "reject"),
                _event(3, pid, "pattern:solid"), _event(4, pid, "fit:slim", "add")])
        stats = fb.stats()
    assert (stats["accepted"], stats["judged"], stats["added"]) == (2, 3, 1)
    assert stats["by_key"]["colour"] == {"accepted": 1, "judged": 2, "acceptance_rate": 0.5}
    assert stats["over_time"][0]["judged"] == 3
    assert main(["feedback", "stats", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "4 events: 2 of 3 proposed tags accepted (66.7%), 1 tags added" in out and "colour" in out


def test_a_retract_withdraws_the_users_own_latest_judgement(shop, tmp_path):
    pid, store = shop["val"][0].id, store_copy(shop, tmp_path)
    with FeedbackStore(store) as fb:
        fb.add([_event(1, pid, "colour:red", time=100), _event(2, pid, "colour:red", "reject", time=200)])
        assert fb.judgements()[pid]["colour:red"] is False
        assert fb.add([_event(3, pid, "colour:red", "retract", time=300)]).stored == 1
        assert fb.judgements()[pid]["colour:red"] is True  # the earlier accept stands again
        assert fb.stats()["judged"] == 1 and fb.stats()["events"] == 3
        fb.add([_event(4, pid, "colour:red", "retract", time=400)])
        assert pid not in fb.judgements() and fb.key_counts() == {}
        refused = fb.add([_event(5, pid, "colour:red", "retract", time=500)]).refused
        assert refused and "no standing judgement" in refused[0][1]
        other = FeedbackEvent(event_id="o1", user="u2", product=pid, tag="colour:red", action="retract")
        assert fb.add([other]).refused  # nobody retracts another user's judgement


def test_a_store_made_before_retract_takes_it_and_keeps_its_events(shop, tmp_path):
    import sqlite3
    pid, store = shop["val"][0].id, store_copy(shop, tmp_path)
    db = sqlite3.connect(store)
    db.executescript("""CREATE TABLE feedback (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, user TEXT NOT NULL,
        product_id TEXT NOT NULL, tag TEXT NOT NULL, action TEXT NOT NULL CHECK (action IN ('accept', 'reject', 'add')),
        at REAL NOT NULL, model_id TEXT, received_at REAL NOT NULL, extra TEXT);""")
    db.execute("INSERT INTO feedback (event_id, user, product_id, tag, action, at, received_at) "
               "VALUES ('old', 'u1', ?, 'colour:red', 'reject', 1, 1)", (pid,))
    db.commit()
    db.close()
    with FeedbackStore(store) as fb:
        assert fb.count() == 1 and fb.add([_event(9, pid, "colour:red", "retract", time=2)]).stored == 1
        assert pid not in fb.judgements()


# ---- immediate adaptation ------------------------------------------------------------------------
def _scores(n, p_red, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return [Scores({"colour:red": p}, np.array([p, 0.1], np.float32), rng.normal(size=dim).astype(np.float32))
            for p in p_red]


def test_a_tag_users_keep_rejecting_gets_a_higher_bar():
    vocab, base = ["colour:red", "pattern:solid"], [TagRule(0.3, NEVER), TagRule(0.3, NEVER)]
    p = np.linspace(0.3, 0.95, 40)
    judged = [{"colour:red": bool(x >= 0.8)} for x in p]  # users reject red below 0.8
    cal = fit_calibration("m", vocab, base, _scores(40, p), judged)
    assert cal.rules["colour:red"].decoder_min > 0.7
    row = {"tags": ["colour:red"], "tag_scores": {"colour:red": 0.5}, "tag_sources": {"colour:red": "decoder"}}
    cal.apply(row, _scores(1, [0.5])[0], {t: i for i, t in enumerate(vocab)})
    assert row["tags"] == []


def test_a_few_judgements_change_nothing():
    vocab, base = ["colour:red", "pattern:solid"], [TagRule(0.3, NEVER), TagRule(0.3, NEVER)]
    cal = fit_calibration("m", vocab, base, _scores(2, [0.4, 0.5]), [{"colour:red": False}, {"colour:red": True}])
    assert cal.rules == {}


def test_a_tag_users_add_that_the_model_never_saw_becomes_known():
    rng = np.random.default_rng(0)
    fused = rng.normal(size=(80, 6)).astype(np.float32)
    has = fused[:, 0] > 0.3  # the new tag goes with one direction of the fused vector
    scores = [Scores({}, np.zeros(1, np.float32), f) for f in fused]
    cal = fit_calibration("m", ["colour:red"], [TagRule(0.3, NEVER)], scores,
                          [{"sleeve:short": True} if h else {} for h in has])
    model = cal.new_tags["sleeve:short"]
    pred = model.probability(fused) >= model.threshold
    assert (pred == has).mean() > 0.9


def test_refit_from_the_store_changes_the_served_tags(shop, tmp_path):
    store = store_copy(shop, tmp_path)
    tagger = BatchTagger(shop["model"], shop["root"] / "features-cache", SETTINGS, tag_source="head")
    val = shop["val"]
    with FeedbackStore(store) as fb:
        learner = LearningTagger(tagger, fb, shop["image_root"])
        before = learner.tag(val)
        tag = max({t for r in before for t in r["tags"]}, key=lambda t: sum(t in r["tags"] for r in before))
        fb.add([_event(i, r["id"], tag, "reject") for i, r in enumerate(before) if tag in r["tags"]])
        cal = learner.refit()
        assert tag in cal.rules and cal.rules[tag].head_min > tagger.model.thresholds[tagger.model.tags.index(tag)]
        assert not any(tag in r["tags"] for r in learner.tag(val))
    with FeedbackStore(store) as fb:  # kept in the store: a restarted service starts adapted
        assert LearningTagger(tagger, fb, shop["image_root"]).calibration.rules[tag] == cal.rules[tag]


# ---- adapt ------------------------------------------------------------------------------------------
def _truthful_feedback(fb, products, rows):
    events = []
    for p, r in zip(products, rows):
        events += [_event(len(events), p.id, t, "accept" if t in p.tags else "reject") for t in r["tags"]]
        events += [_event(len(events), p.id, t, "add") for t in set(p.tags) - set(r["tags"])]
    fb.add(events)


def test_adapt_writes_a_child_with_its_lineage_and_promotes_only_a_model_that_is_not_worse(shop, tmp_path):
    store = store_copy(shop, tmp_path)
    with FeedbackStore(store) as fb:
        _truthful_feedback(fb, shop["val"], [fb.tags.get(p.id) for p in shop["val"]])
    options = AdaptConfig(epochs=1, promote=True, tolerance=1.0)  # a gate anything passes
    lineage = adapt_model(shop["model"], store, tmp_path / "m2", SETTINGS, options)
    assert lineage["promoted"] and promoted_model(store) == (tmp_path / "m2").resolve()
    assert [t["head_lr"] for t in lineage["learning_rates"]] == [5e-5, 1e-3, 5e-3]  # a child per rate, one kept
    assert sum(t["kept"] for t in lineage["learning_rates"]) == 1
    saved = json.loads((tmp_path / "m2" / "lineage.json").read_text())
    assert saved["parent"]["path"] == str(shop["model"].resolve()) and saved["feedback"]["judged_products"] == len(shop["val"])
    assert BatchTagger(tmp_path / "m2", shop["root"] / "features-cache", SETTINGS).tag(shop["val"][:2],
                                                                                       shop["image_root"])
    # the keys that got the shop's prior keep the parent's evidence (the prior was fitted on it)
    from multimodal_tags.models.tagger import Tagger
    parent, child = Tagger.load(shop["model"]), Tagger.load(tmp_path / "m2")
    prior_keys = set(saved["key_priors"].get("head", {}))
    assert prior_keys and child.key_priors == saved["key_priors"]
    rows = [j for j, t in enumerate(child.tags) if t.split(":", 1)[0] in prior_keys]
    assert torch.equal(child.tag_head.linear.weight[rows], parent.tag_head.linear.weight[rows])
    # a child that is worse on the gate is refused: a learning rate that wrecks the heads
    worse = adapt_model(shop["model"], store, tmp_path / "m3", SETTINGS, AdaptConfig(epochs=2, lr=5.0, head_lrs=(), promote=True))
    assert not worse["gate"]["passed"] and not worse["promoted"]
    assert promoted_model(store) == (tmp_path / "m2").resolve()
    assert main(["adapt", "--model", str(shop["model"]), "--store", str(store), "--out", str(tmp_path / "m4"),
                 "--lr", "5", "--epochs", "2", "--promote", "--allow-random-weights"]) == 1


def test_an_adapted_child_keeps_its_parents_lm_decoder_only_while_its_fused_vectors_are_the_parents(shop, tmp_path):
    import shutil

    parent_dir = tmp_path / "parent"
    shutil.copytree(shop["model"], parent_dir)
    (parent_dir / "lm_decoder").mkdir()
    (parent_dir / "lm_decoder" / "decoder.json").write_text("{}")  # stands for a trained LM decoder
    store = store_copy(shop, tmp_path)
    with FeedbackStore(store) as fb:
        _truthful_feedback(fb, shop["val"], [fb.tags.get(p.id) for p in shop["val"]])
    cache = shop["root"] / "features-cache"
    adapt_model(parent_dir, store, tmp_path / "child", SETTINGS, AdaptConfig(epochs=1, head_lrs=()))
    assert (tmp_path / "child" / "lm_decoder" / "decoder.json").read_text() == "{}"
    fused = [BatchTagger(m, cache, SETTINGS, "head", decoder="scratch").tag_raw(shop["val"][:4], shop["image_root"])[1].fused
             for m in (parent_dir, tmp_path / "child")]
    assert torch.equal(*fused)  # what the LM decoder reads is unchanged
    logged = []
    settings = type(SETTINGS)(**{**SETTINGS.__dict__, "log": logged.append})
    adapt_model(parent_dir, store, tmp_path / "fusion", settings, AdaptConfig(epochs=1, head_lrs=(), train_fusion=True))
    assert not (tmp_path / "fusion" / "lm_decoder").exists()
    assert any("retrain it with `mmtags train-decoder" in line for line in logged)


def test_category_judgements_label_the_judged_products_category(shop, tmp_path):
    from multimodal_tags.feedback.adapt import judged_products
    store = store_copy(shop, tmp_path)
    a, b, c = (p.id for p in shop["val"][:3])
    with FeedbackStore(store) as fb:
        fb.add([_event(1, a, "category:MUG", "add"), _event(2, b, "category:Nonsense", "add"),
                _event(3, c, "category:Mug", "reject"), _event(4, c, "colour:red", "add")])
        judged = {p.id: p for p in judged_products(fb, ["Mug", "Hat"])[0]}
    assert judged[a].category == "Mug" and judged[b].category is None and judged[c].category is None
    assert not any(t.startswith("category:") for p in judged.values() for t in p.tags)
    assert "colour:red" in judged[c].tags


def test_the_kept_learning_rate_learns_most_without_forgetting_the_original_shop():
    from multimodal_tags.feedback.adapt import _better

    def t(score, change, forgets):
        return {"holdout_score": score, "val_tag_f1_change": change, "val_accuracy_change": 0.0, "forgets": forgets}
    assert _better(t(1.2, -0.001, False), t(1.0, 0.0, False))  # learns more, forgets within tolerance
    assert not _better(t(1.5, -0.02, True), t(1.0, 0.0, False))  # learns most, but forgets
    assert _better(t(0.9, -0.01, True), t(1.5, -0.05, True))  # all forget: the one that forgets least


def test_the_rate_of_wrong_judgements_is_estimated_from_confident_proposals():
    from multimodal_tags.feedback.adapt import judgement_error_rate

    rng = np.random.default_rng(0)
    p = rng.uniform(0.9, 1.0, 5000)
    right = rng.random(5000) < p  # the model is calibrated
    careful = list(zip(p, right))
    flipped = rng.random(5000) < 0.1
    sloppy = list(zip(p, right ^ flipped))
    assert judgement_error_rate(careful) < 0.02
    assert abs(judgement_error_rate(sloppy) - 0.1) < 0.02
    assert judgement_error_rate(sloppy[:20]) == 0.0  # too few to tell


def test_adapt_replays_the_train_split_as_training_built_it_and_finds_its_word_scores_cached(tmp_path):
    import dataclasses

    from conftest import synthetic_catalog
    from multimodal_tags.config import TrainConfig
    from multimodal_tags.data.catalog import read_catalog
    from multimodal_tags.models.presets import get_preset
    from multimodal_tags.train.job import train_tagger

    synthetic_catalog(tmp_path, 160)
    tcfg = TrainConfig(epochs=1, batch_size=32, max_train_products=80, masked_copies=0.5, word_score_folds=3)
    train_tagger(tmp_path / "catalog.jsonl", tmp_path / "run", get_preset("tiny"), tcfg, SETTINGS)
    recorded = json.loads((tmp_path / "run" / "model" / "lineage.json").read_text())["train"]
    assert recorded["masked_copies"] == 0.5 and recorded["word_score_folds"] == 3
    catalog = read_catalog(tmp_path / "catalog.jsonl")
    val = [p for p in catalog.products if p.split == "val"]
    rows = BatchTagger(tmp_path / "run" / "model", tmp_path / "features-cache", SETTINGS).tag(val, catalog.image_root)
    with TagStore(tmp_path / "tags.db") as store:
        store.write(rows, {}, val)
    with FeedbackStore(tmp_path / "tags.db") as fb:
        _truthful_feedback(fb, val, [fb.tags.get(p.id) for p in val])
    logs: list[str] = []
    lineage = adapt_model(tmp_path / "run" / "model", tmp_path / "tags.db", tmp_path / "child",
                          dataclasses.replace(SETTINGS, log=logs.append), AdaptConfig(epochs=1, head_lrs=()))
    assert any(line.startswith("word scores: cached") for line in logs), logs  # not fitted again
    assert not any(line.startswith("word scores: ") and "SVMs" in line for line in logs)
    assert lineage["train"] == recorded  # a child's children find them too


def test_a_new_shops_reviews_give_each_required_key_its_prior_and_the_model_keeps_it(shop, tmp_path):
    from types import SimpleNamespace

    import torch

    from multimodal_tags.data.schema import Product
    from multimodal_tags.feedback.priors import fit_key_prior, key_priors
    from multimodal_tags.models.tagger import Tagger

    rng = np.random.default_rng(0)
    # evidence that says nothing (random guesses, blue favoured), and a shop where 80% are black
    noise = rng.dirichlet([1, 3], size=200)
    silent = fit_key_prior(noise, (rng.random(200) < 0.2).astype(int))
    assert silent["temperature"] <= 0.2 and silent["bias"][0] > silent["bias"][1]  # the shop's prior wins
    # evidence that is right: it is kept (T near 1)
    truth = (rng.random(200) < 0.5).astype(int)
    sharp = np.where(truth[:, None] == [0, 1], 0.9, 0.1)
    assert fit_key_prior(sharp, truth)["temperature"] >= 0.8
    fake = SimpleNamespace(tags=["colour:black", "colour:blue", "gender:men"], required={"*": ["colour"]})
    labelled = [Product(id=str(i), title="t", tags=["colour:black" if i < 80 else "colour:blue"]) for i in range(100)]
    probs = np.tile([0.2, 0.6, 0.9], (100, 1))
    priors = key_priors(fake, probs, ["head"] * 100, labelled)
    assert set(priors) == {"head"} and set(priors["head"]) == {"colour"}  # required keys, reviewed sources
    assert key_priors(fake, probs[:10], ["head"] * 10, labelled[:10]) == {}  # too few reviews: none
    # a stored value nobody judged is the model's own answer: only judged keys count
    assert key_priors(fake, probs, ["head"] * 100, labelled, {str(i): {"gender"} for i in range(100)}) == {}
    assert key_priors(fake, probs, ["head"] * 100, labelled, {str(i): {"colour"} for i in range(100)}) == priors
    # the priors travel with the model folder and decide what a required key is filled with
    model = Tagger.load(shop["model"])
    key = next(k for keys in model.required.values() for k in keys)
    values = [t for t in model.tags if t.startswith(key + ":")]
    flat = torch.full((len(model.tags),), 0.5)
    flat[model.tags.index(values[0])] = 0.6
    assert model.required_answers(model.categories[0], flat, "head")[key][0] == values[0]
    model.set_key_priors({"head": {key: {"temperature": 0.0, "bias": {values[-1]: 2.0}}}})
    model.save(tmp_path / "shifted")
    again = Tagger.load(tmp_path / "shifted")
    assert again.key_priors["head"][key]["bias"] == {values[-1]: 2.0}
    tag, score = again.required_answers(again.categories[0], flat, "head")[key]
    assert tag == values[-1] and score > 0.9  # the shop's prior, as a probability
    assert again.required_answers(again.categories[0], flat, "photo")[key][0] == values[0]  # photos: untouched
