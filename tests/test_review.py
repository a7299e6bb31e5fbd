"""The review queue and the routes of the review page (the page itself in a real browser: test_review_browser.py)."""
import pytest
from fastapi.testclient import TestClient

from multimodal_tags.feedback.feedback_store import FeedbackStore
from multimodal_tags.feedback.review_queue import closeness, spread
from multimodal_tags.service.app import create_app
from multimodal_tags.service.auth import KeyRing
from test_service import _config

REVIEWER_KEYS = "ann review,read {ann}\nbot write {bot}\n"
ANN, BOT = "ann-reviews-tags-0001", "bot-only-writes-00001"


@pytest.fixture
def open_client(shop, tmp_path):
    cfg = _config(shop, tmp_path, index_refresh_s=0.0)
    with TestClient(create_app(cfg)) as c:
        c.store_path = cfg.store_path
        yield c


@pytest.fixture
def keyed(shop, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(REVIEWER_KEYS.format(ann=ANN, bot=BOT))
    cfg = _config(shop, tmp_path, keys=KeyRing.from_file(keys), index_refresh_s=0.0)
    with TestClient(create_app(cfg)) as c:
        c.store_path = cfg.store_path
        yield c


def test_closeness_and_the_spread_over_categories():
    assert closeness(0.5, 0.5) == 1.0 and closeness(1.0, 0.5) == 0.0 and closeness(0.0, 0.4) == 0.0
    assert closeness(0.3, 0.4) == pytest.approx(0.75)
    cards = [{"id": f"{c}{i}", "category": c, "priority": p, "reviewed": False}
             for c, i, p in [("a", 1, .9), ("a", 2, .8), ("a", 3, .7), ("b", 1, .5)]]
    cards.append({"id": "a0", "category": "a", "priority": 1.0, "reviewed": True})
    # a has 4 cards, b 1: a takes 4 turns to b's 1, each category's most uncertain first, reviewed last
    assert [c["id"] for c in spread(cards, order="uncertain")] == ["a1", "a2", "b1", "a3", "a0"]
    assert [c["id"] for c in spread(cards, 0, "uncertain")] == ["a1", "b1", "a2", "a3", "a0"]  # one each in turn
    shop = [c["id"] for c in spread(cards)]  # the default: a fixed pseudo-random order within each category
    assert shop == [c["id"] for c in spread(list(reversed(cards)))] and shop[-1] == "a0" and shop[2] == "b1"
    assert sorted(shop[:3] + shop[3:4]) == ["a1", "a2", "a3", "b1"]
    with pytest.raises(ValueError, match="order"):
        spread(cards, order="newest")


def test_the_queue_holds_every_product_with_its_tags_and_counters(open_client, shop):
    data = open_client.get("/review/queue", params={"limit": 200}).json()
    assert data["total"] == len(shop["val"]) and data["counters"]["reviewed"] == 0
    card = data["cards"][0]
    assert {"id", "title", "description", "category", "category_score", "category_top", "tags", "priority"} <= set(card)
    assert all({"tag", "score", "source", "suggested", "judged"} <= set(t) for t in card["tags"])
    uncertain = open_client.get("/review/queue", params={"limit": 200, "order": "uncertain"}).json()["cards"]
    priorities = [c["priority"] for c in uncertain if c["category"] == card["category"]]
    assert priorities == sorted(priorities, reverse=True)  # within a category, the most uncertain first
    assert sorted(c["id"] for c in uncertain) == sorted(c["id"] for c in data["cards"])  # the same cards
    assert open_client.get("/review/queue", params={"order": "newest"}).status_code == 422
    one = data["cards"][0]["category"]
    assert {c["category"] for c in open_client.get("/review/queue", params={"category": one}).json()["cards"]} == {one}
    photo = open_client.get(f"/review/photo/{card['id']}")
    assert photo.status_code == 200 and photo.content[:2] == b"\xff\xd8"
    assert open_client.get("/review/photo/nobody").status_code == 404
    vocab = open_client.get("/review/vocab").json()
    assert vocab["tags"] and vocab["categories"] and vocab["needs_name"] is True


def test_actions_are_stored_exactly_and_an_undo_retracts(open_client, shop):
    card = open_client.get("/review/queue").json()["cards"][0]
    tag, pid = card["tags"][0]["tag"], card["id"]
    actions = [{"event_id": "r1", "product": pid, "tag": tag, "action": "reject"},
               {"event_id": "r2", "product": pid, "tag": "fit:slim", "action": "add"}]
    assert open_client.post("/review/actions", json={"reviewer": "ann", "actions": actions}).json()["stored"] == 2
    again = open_client.post("/review/actions", json={"reviewer": "ann", "actions": actions}).json()
    assert again["stored"] == 0 and again["duplicates"] == 2  # a double click is stored once
    category = [{"event_id": "c1", "product": pid, "tag": f"category:{card['category']}", "action": "accept"}]
    assert open_client.post("/review/actions", json={"reviewer": "bo", "actions": category}).json()["stored"] == 1
    cards = open_client.get("/review/queue", params={"limit": 200}).json()["cards"]
    assert next(c for c in cards if c["id"] == pid)["category_judged"] is True
    undo = [{"event_id": "u1", "product": pid, "tag": tag, "action": "retract"}]
    assert open_client.post("/review/actions", json={"reviewer": "ann", "actions": undo}).json()["stored"] == 1
    with FeedbackStore(open_client.store_path) as fb:
        assert [(e["event_id"], e["user"], e["action"]) for e in fb.events()] == [
            ("r1", "ann", "reject"), ("r2", "ann", "add"), ("c1", "bo", "accept"), ("u1", "ann", "retract")]
        assert fb.judgements()[pid] == {"fit:slim": True, f"category:{card['category']}": True}
    served = open_client.get(f"/products/{pid}/tags").json()
    assert tag in served["tags"] and served["tags"]["fit:slim"]["source"] == "feedback"
    assert open_client.get("/review/queue").json()["counters"]["reviewed"] == 1


@pytest.mark.parametrize("action, status, field", [
    ({"event_id": "x", "product": "nobody", "tag": "colour:red", "action": "accept"}, 422, "actions.0.product"),
    ({"event_id": "x", "product": "{pid}", "tag": "never:shown", "action": "accept"}, 422, "actions.0.tag"),
    ({"event_id": "x", "product": "{pid}", "tag": "colour:red", "action": "like"}, 422, "action"),
    ({"event_id": "x", "product": "{pid}", "tag": "colour:red", "action": "retract"}, 422, "no standing judgement"),
])
def test_a_bad_action_is_a_4xx_naming_the_field(open_client, shop, action, status, field):
    pid = shop["val"][0].id
    action = {k: v.format(pid=pid) for k, v in action.items()}
    r = open_client.post("/review/actions", json={"reviewer": "ann", "actions": [action]})
    assert r.status_code == status and field in r.text
    r = open_client.post("/review/actions", json={"actions": [action]})  # and nobody named
    assert r.status_code == 422 and ("reviewer" in r.text or field == "action")


def test_rejecting_a_key_across_the_queue_counts_first_and_is_stored_once(open_client):
    cards = open_client.get("/review/queue", params={"limit": 200}).json()["cards"]
    key = cards[0]["tags"][0]["tag"].split(":")[0]
    shown = sum(t["tag"].split(":")[0] == key and not t["suggested"] for c in cards for t in c["tags"])
    body = {"key": key, "request_id": "bulk-1", "reviewer": "ann"}
    assert open_client.post("/review/reject-key", json=body).json() == {"count": shown}
    assert open_client.post("/review/reject-key", json={**body, "expected": shown + 1}).status_code == 409
    reply = open_client.post("/review/reject-key", json={**body, "expected": shown}).json()
    assert reply["stored"] == shown == len(reply["pairs"])
    assert open_client.post("/review/reject-key", json=body).json() == {"count": 0}  # nothing left to reject


def test_with_keys_the_page_and_its_routes_need_a_review_key(keyed, shop):
    page = keyed.get("/review")
    assert page.status_code == 401 and "API key" in page.text
    assert keyed.get("/review/queue").status_code == 401
    assert keyed.get("/review/queue", headers={"X-API-Key": BOT}).status_code == 403
    assert keyed.post("/review/login", json={"key": BOT}).status_code == 401
    assert keyed.post("/review/login", json={"key": ANN}).status_code == 204  # sets the page's cookie
    assert keyed.get("/review").status_code == 200 and keyed.get("/review/queue").status_code == 200
    card = keyed.get("/review/queue").json()["cards"][0]
    action = {"event_id": "k1", "product": card["id"], "tag": card["tags"][0]["tag"], "action": "accept"}
    assert keyed.post("/review/actions", json={"reviewer": "someone else", "actions": [action]}).json()["stored"] == 1
    with FeedbackStore(keyed.store_path) as fb:
        assert fb.events()[0]["user"] == "ann"  # named by the key, not by the body
    assert keyed.get("/review/vocab").json()["needs_name"] is False


def test_the_page_and_its_files_are_served(open_client):
    page = open_client.get("/review")
    assert page.status_code == 200 and "/review/static/review.js" in page.text
    assert open_client.get("/review/static/review.js").status_code == 200
    assert open_client.get("/review/static/..%2Fapp.py").status_code == 404
