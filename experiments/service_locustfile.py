"""Locust users for experiments/service_load.py: tag products, then judge their tags in batches.

Reads MMTAGS_LOAD_PRODUCTS (JSONL of products to tag) and writes, when the test stops, MMTAGS_LOAD_OUT:
acknowledged event ids, status-code counts and /tag latencies (what the experiment checks).
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid

from locust import HttpUser, between, events, task

PRODUCTS = [json.loads(line) for line in open(os.environ["MMTAGS_LOAD_PRODUCTS"], encoding="utf-8")]
EVENTS_PER_POST = int(os.environ.get("MMTAGS_LOAD_EVENTS_PER_POST", "10"))
LOCK = threading.Lock()
ACKED: set[str] = set()
CODES: dict[str, int] = {}
TAG_MS: list[float] = []
TAG_OK: list[float] = []  # completion times of successful /tag calls


@events.request.add_listener
def _count(request_type, name, response_time, response_length, response=None, exception=None, **kw):
    status = getattr(response, "status_code", 0)  # 0: no response (the server was down)
    code = str(status) if status else "no response"
    with LOCK:
        CODES[code] = CODES.get(code, 0) + 1
        if name == "/tag" and code == "200":
            TAG_MS.append(response_time)
            TAG_OK.append(time.time())


@events.test_stop.add_listener
def _write(environment, **kw):
    with LOCK, open(os.environ["MMTAGS_LOAD_OUT"], "w", encoding="utf-8") as f:
        json.dump({"acked": sorted(ACKED), "codes": CODES, "tag_ms": TAG_MS, "tag_ok_times": TAG_OK}, f)


class Reviewer(HttpUser):
    """Tags a product, then judges some of its tags (accept / reject / add), sometimes redelivering."""

    wait_time = between(0.0, 0.05)

    def on_start(self):
        self.tagged: list[dict] = []
        self.sent: list[list[dict]] = []

    @task(1)
    def tag(self):
        product = random.choice(PRODUCTS)
        with self.client.post("/tag", json=product, name="/tag", catch_response=True) as r:
            if r.status_code == 200:
                self.tagged.append(r.json())
                r.success()
            elif not r.status_code:
                time.sleep(0.2)  # the server is down (killed by the experiment): retry a little later

    @task(3)
    def feedback(self):
        if not self.tagged:
            return
        if self.sent and random.random() < 0.05:  # a redelivery: must be stored once
            batch = random.choice(self.sent)
        else:
            batch = [self._event(random.choice(self.tagged)) for _ in range(EVENTS_PER_POST)]
        with self.client.post("/feedback", json=batch, name="/feedback", catch_response=True) as r:
            if r.status_code == 200:
                body = r.json()
                refused = {x["event_id"] for x in body["refused"]}
                with LOCK:
                    ACKED.update(e["event_id"] for e in batch if e["event_id"] not in refused)
                self.sent.append(batch)
                r.success()
            elif not r.status_code:
                time.sleep(0.2)

    @staticmethod
    def _event(row: dict) -> dict:
        action = random.choice(("accept", "reject", "add"))
        tag = random.choice(row["tags"]) if row["tags"] and action != "add" else f"load:tag{random.randint(0, 20)}"
        return {"event_id": uuid.uuid4().hex, "user": f"u{random.randint(0, 50)}", "product": row["id"],
                "tag": tag, "action": action if row["tags"] else "add", "model_id": row["model_id"]}


if os.environ.get("MMTAGS_LOAD_MIXED"):
    class Shopper(HttpUser):
        """(the mixed workload) Asks for a user's recommendations and posts their clicks and purchases."""

        wait_time = between(0.0, 0.05)

        @task(3)
        def recommendations(self):
            self.client.get(f"/users/u{random.randint(0, 50)}/recommendations?k=10",
                            name="/users/{user}/recommendations")

        @task(1)
        def interaction(self):
            product = random.choice(PRODUCTS)
            self.client.post("/interactions", name="/interactions",
                             json={"event_id": uuid.uuid4().hex, "user": f"u{random.randint(0, 50)}",
                                   "product": str(product["id"]), "kind": random.choice(("click", "purchase"))})
