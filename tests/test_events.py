"""Events that cannot poison the store: times ahead of the clock, reused event ids, look-alike tags and
unknown fields are refused with the reason; nothing dated ahead wins over later judgements."""
import time

import pytest

from multimodal_tags.feedback.events import FeedbackEvent, Interaction, clean_tag, parse_event, parse_interaction
from multimodal_tags.feedback.feedback_store import FeedbackStore
from multimodal_tags.personal.profiles import Profiles, add_interactions
from test_feedback import store_copy


def _judge(i, pid, action, when=None, tag="colour:red"):
    return FeedbackEvent(event_id=f"j{i}", user="u", product=pid, tag=tag, action=action, time=when)


def test_a_time_far_ahead_is_refused_and_one_slightly_ahead_counts_as_received(shop, tmp_path):
    pid, now = shop["val"][0].id, time.time()
    with FeedbackStore(store_copy(shop, tmp_path), future_tolerance_s=300) as fb:
        far = fb.add([_judge(1, pid, "accept", now + 86400 * 365)])
        assert far.stored == 0 and "ahead of the receiver's clock" in far.refused[0][1]
        assert fb.add([_judge(2, pid, "accept", now + 200)]).stored == 1  # within the tolerance
        assert fb.events()[-1]["at"] <= time.time()  # counted at its receipt, not in the future
        assert fb.add([_judge(3, pid, "reject")]).stored == 1  # a later real judgement wins
        assert fb.judgements_of([pid])[pid]["colour:red"] is False


def test_an_event_stored_ahead_before_the_rule_does_not_win_for_ever(shop, tmp_path):
    pid = shop["val"][0].id
    with FeedbackStore(store_copy(shop, tmp_path)) as fb:
        fb.add([_judge(1, pid, "accept")])
        fb.db.execute("UPDATE feedback SET at = at + 1e9")  # as an old store may hold it
        fb.add([_judge(2, pid, "reject")])
        assert fb.judgements_of([pid])[pid]["colour:red"] is False


def test_interactions_refuse_a_reused_event_id_with_other_content_and_far_future_times(shop, tmp_path):
    from multimodal_tags.tagging.tag_store import TagStore

    a, b = shop["val"][0].id, shop["val"][1].id
    with TagStore(store_copy(shop, tmp_path)) as store:
        profiles = Profiles(store)
        first = Interaction(event_id="i1", user="ann", product=a, kind="purchase")
        assert add_interactions(profiles, [first]).stored == 1
        again = add_interactions(profiles, [first])
        assert (again.stored, again.duplicates, again.refused) == (0, 1, [])
        other = add_interactions(profiles, [Interaction(event_id="i1", user="ann", product=b, kind="purchase")])
        assert other.stored == 0 and "other content" in other.refused[0][1]
        twice = add_interactions(profiles, [Interaction(event_id="i2", user="bo", product=a, kind="click"),
                                            Interaction(event_id="i2", user="bo", product=b, kind="click")])
        assert twice.stored == 1 and "twice in this delivery" in twice.refused[0][1]
        future = Interaction(event_id="i3", user="ann", product=a, kind="purchase", time=time.time() + 10 ** 8)
        assert "ahead" in add_interactions(profiles, [future]).refused[0][1]
        as_of = store.db.execute("SELECT MAX(as_of) FROM profile").fetchone()[0]
        assert as_of <= time.time()  # no profile ages from the future


@pytest.mark.parametrize("tag, expected", [
    ("ｃｏｌｏｕｒ:ｒｅｄ", "colour:red"),  # full-width forms are the same tag
    ("size:Ⅻ", "size:XII"),
    ("颜色:红色", "颜色:红色"),
    ("尺码:S码", "尺码:S码"),  # Han beside Latin is a real tag, not a look-alike
])
def test_tags_are_nfkc_normalised(tag, expected):
    assert clean_tag(tag) == expected


@pytest.mark.parametrize("tag", ["colour:blаck", "colour:rеd", "fit:slіm", "neck:ν-neck"])
def test_look_alike_tags_mixing_scripts_are_refused(tag):
    with pytest.raises(ValueError, match=r"^tag: tag mixes"):
        parse_event({"event_id": "1", "user": "u", "product": "p", "tag": tag, "action": "add"})


def test_unknown_fields_of_an_interaction_are_refused():
    with pytest.raises(ValueError, match="^blob: Extra inputs are not permitted"):
        parse_interaction({"event_id": "1", "user": "u", "product": "p", "kind": "click", "blob": "x"})
