"""User profiles: affinities from events, recency, shrinkage towards the global profile, ranking;
the leave-one-out split of experiments/personalization.py."""

import json

import numpy as np
import pytest

from multimodal_tags.personal.profiles import DAY, ProfileConfig, Profiles, match_score, rank_tags
from multimodal_tags.tagging.tag_store import TagStore

T0 = 1_800_000_000.0


@pytest.fixture
def profiles(tmp_path):
    with TagStore(tmp_path / "tags.db") as store:
        yield Profiles(store, ProfileConfig(half_life_days=10, shrinkage=2))


def test_a_users_profile_moves_towards_the_tags_of_what_they_bought(profiles):
    profiles.add("g1", "other", "purchase", ["colour:red", "fit:slim"], T0)
    before = profiles.affinities("ann", T0)
    for i in range(5):
        profiles.add(f"a{i}", "ann", "purchase", ["colour:blue", "fabric:linen"], T0 + i)
    after = profiles.affinities("ann", T0 + 10)
    assert after["colour:blue"] > before.get("colour:blue", 0) and after["colour:blue"] > after["colour:red"]
    assert rank_tags(["colour:red", "fit:slim", "colour:blue"], after) == ["colour:blue", "colour:red", "fit:slim"]


def test_an_unknown_user_gets_the_global_order_and_little_evidence_stays_near_it(profiles):
    for i in range(20):
        profiles.add(f"g{i}", f"u{i}", "purchase", ["colour:black"], T0)
    profiles.add("x", "bob", "purchase", ["colour:pink"], T0)
    unknown = profiles.affinities("nobody", T0)
    assert unknown == profiles.affinities(None, T0)
    assert rank_tags(["colour:pink", "colour:black"], unknown) == ["colour:black", "colour:pink"]
    bob = profiles.affinities("bob", T0)
    assert 0 < bob["colour:pink"] < 0.5 and bob["colour:black"] > 0.5  # one purchase, shrinkage 2


def test_recent_events_count_more_and_replays_count_once(profiles):
    assert profiles.add("old", "ann", "purchase", ["colour:red"], T0)
    assert profiles.add("new", "ann", "purchase", ["colour:blue"], T0 + 30 * DAY)
    assert not profiles.add("new", "ann", "purchase", ["colour:blue"], T0 + 30 * DAY)
    raw = profiles.raw("ann", T0 + 30 * DAY)
    assert raw["colour:blue"] == pytest.approx(1.0) and raw["colour:red"] == pytest.approx(0.125)
    late = profiles.add("late", "ann", "purchase", ["colour:red"], T0)  # delivered late: as old as it is
    assert late and profiles.raw("ann", T0 + 30 * DAY)["colour:red"] == pytest.approx(0.25)


def test_rejected_tags_sink_and_products_are_ranked_by_their_tags(profiles):
    profiles.add("p", "ann", "purchase", ["colour:red", "season:summer"], T0)
    profiles.add("r", "ann", "reject", ["season:summer"], T0)
    aff = profiles.affinities("ann", T0)
    assert aff["season:summer"] < aff["colour:red"]
    assert match_score(["colour:red", "fit:slim"], aff) > match_score(["colour:blue", "fit:slim"], aff)
    with pytest.raises(ValueError, match="kind"):
        profiles.add("z", "ann", "like", ["colour:red"], T0)


def test_leave_one_out_never_lets_the_held_out_article_into_the_profile(tmp_path):
    from experiments import personalization as pz

    bought = {"ann": ["a1", "a2", "a3"], "bob": ["a8", "a9"], "cy": ["a4", "a5", "a6", "a7"]}  # nobody shares
    articles = [f"a{i}" for i in range(1, 200)]
    cases = pz.leave_one_out(bought, articles, seed=3)
    assert [c["customer"] for c in cases] == ["ann", "cy"]  # bob has fewer than 3
    for c in cases:
        assert c["held"] not in c["history"] and c["candidates"][0] == c["held"]
        assert len(c["candidates"]) == 100 and not set(c["candidates"][1:]) & set(bought[c["customer"]])
    assert cases == pz.leave_one_out(bought, articles, seed=3)  # fixed seed, same split
    tags = {a: [f"t:{a}"] for a in articles}  # each article its own tag: a leak would show
    scores = pz.profile_scores(cases, bought, tags, tmp_path, "leak-check")
    for c, s in zip(cases, scores):
        assert s[0] == 0.0  # the held-out article's tag never reached any profile
    assert pz.rank_of_held(np.array([1.0, 2.0, 1.0, 0.0])) == 1.5


def test_the_command_line_orders_a_products_tags_for_a_user_and_recommends(tmp_path, capsys):
    from multimodal_tags.cli import main

    store_path = tmp_path / "tags.db"
    rows = [{"id": pid, "category": "Mug", "category_score": 0.9, "tags": tags, "model_id": "m", "content_hash": pid,
             "tag_scores": {t: 0.9 - 0.1 * i for i, t in enumerate(tags)}, "tag_sources": dict.fromkeys(tags, "head")}
            for pid, tags in (("p1", ["colour:red", "pattern:solid"]), ("p2", ["colour:blue", "pattern:striped"]))]
    with TagStore(store_path) as store:
        store.write(rows, {})
    events = tmp_path / "interactions.jsonl"
    events.write_text('{"event_id": "e1", "user": "ann", "product": "p2", "kind": "purchase"}\n'
                      '{"event_id": "e1", "user": "ann", "product": "p2", "kind": "purchase"}\n'
                      '{"event_id": "e2", "user": "ann", "product": "p9", "kind": "click"}\n'
                      '{"event_id": "e3", "user": "ann", "product": "p1", "kind": "like"}\n')
    assert main(["interactions", "import", str(events), "--store", str(store_path)]) == 0
    out, err = capsys.readouterr()
    assert "counted 1, duplicates 1, refused 2" in out
    assert f"{events}:3: product: unknown product 'p9'" in err and f"{events}:4: kind:" in err
    assert main(["tags", "p1", "--store", str(store_path), "--user", "nobody"]) == 0
    assert capsys.readouterr().out.split()[::2] == ["colour:red", "pattern:solid"]
    assert main(["recommend", "--store", str(store_path), "--user", "ann", "--k", "1"]) == 0
    assert capsys.readouterr().out.split()[0] == "p2"
    assert main(["tags", "nope", "--store", str(store_path)]) == 1


def test_a_user_stops_seeing_keys_they_reject_and_sees_more_of_keys_only_they_want():
    from multimodal_tags.personal.ranking import key_rates, personal_view

    everyone = {"season": (50, 100), "colour": (95, 100)}
    rejecter = key_rates({"season": (0, 50), "colour": (48, 50)}, everyone)
    fan = key_rates({"season": (50, 50), "colour": (48, 50)}, everyone)
    shared = key_rates(everyone, everyone)
    tags, head = {"season:summer": 0.9, "colour:red": 0.8}, {"season:fall": 0.4, "colour:maroon": 0.5}
    assert set(personal_view(tags, rejecter, shared, head)) == {"colour:red"}
    assert set(personal_view(tags, fan, shared, head)) == {"season:summer", "colour:red", "season:fall"}
    assert personal_view(tags, key_rates({}, everyone), shared, head) == tags  # unknown user: everyone's view


def test_a_purchase_and_a_judgement_with_the_same_event_id_both_count(tmp_path):
    from multimodal_tags.feedback.events import FeedbackEvent, Interaction
    from multimodal_tags.feedback.feedback_store import FeedbackStore
    from multimodal_tags.personal.profiles import add_interactions, sync_feedback

    row = {"id": "p1", "category": "Mug", "category_score": 0.9, "tags": ["colour:red"], "model_id": "m",
           "content_hash": "h", "tag_scores": {"colour:red": 0.9}, "tag_sources": {"colour:red": "head"}}
    with FeedbackStore(tmp_path / "tags.db") as fb:
        fb.tags.write([row], {})
        fb.add([FeedbackEvent(event_id="e1", user="ann", product="p1", tag="fit:slim", action="add")])
        profiles = Profiles(fb.tags)
        assert sync_feedback(profiles) == 1 and sync_feedback(profiles) == 0
        assert add_interactions(profiles, [Interaction(event_id="e1", user="ann", product="p1", kind="purchase")]).stored == 1
        assert set(profiles.raw("ann")) == {"fit:slim", "colour:red"}


def test_the_tag_index_ranks_as_a_scan_of_every_product_would(tmp_path):
    import math
    import random
    from collections import Counter

    from multimodal_tags.personal.profiles import match_score
    from multimodal_tags.personal.tag_index import TagIndex
    from multimodal_tags.tagging.tag_store import TagStore

    rng = random.Random(5)
    vocab = [f"k{i % 7}:v{i}" for i in range(40)]
    with TagStore(tmp_path / "s.db") as store:
        rows = {f"p{i:03d}": sorted(set(rng.sample(vocab, rng.randint(0, 6)))) for i in range(300)}
        with store.transaction():
            for pid, tags in rows.items():
                store.db.execute("INSERT INTO products (id, content_hash, model_id, category, category_score, tags, "
                                 "updated_at) VALUES (?, 'h', 'm', 'c', 1.0, ?, 0)",
                                 (pid, json.dumps({t: {"score": 1.0} for t in tags})))
        index = TagIndex.build(store)
    df = Counter(t for ts in rows.values() for t in ts)
    idf = {t: math.log((len(rows) + 1) / c) for t, c in df.items()}
    for _ in range(5):
        affinity = {t: rng.uniform(-0.2, 1.0) for t in rng.sample(vocab, 8)}
        scan = sorted(((match_score(ts, affinity, idf), pid) for pid, ts in rows.items()), key=lambda x: (-x[0], x[1]))
        expected = [{"id": pid, "score": round(s, 5)} for s, pid in scan[:10]]
        assert index.top(affinity, 10) == expected
    assert index.top({}, 3) == [{"id": pid, "score": 0.0} for pid in sorted(rows)[:3]]  # all tied: by id


def test_recommend_speed_experiment_runs_small(tmp_path):
    from experiments import recommend_speed

    r = recommend_speed.main(["--out", str(tmp_path), "--products", "300", "--users", "5"])
    assert r["same_results"] and r["products"] == 300
