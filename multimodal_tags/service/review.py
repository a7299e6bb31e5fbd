"""The review page of `mmtags serve`: GET /review, and the routes under /review that it calls.

    GET  /review                 the page (static HTML, CSS and JS of this package; no build step)
    POST /review/login           with a key file: {"key"} sets the page's cookie (HttpOnly, SameSite=Strict)
    GET  /review/queue           cards in queue order (feedback/review_queue.py), filtered, and the counters
    GET  /review/photo/{id}      a product's photo (404: the page shows a placeholder)
    GET  /review/vocab           the model's tags and categories (autocomplete), the live model, its lineage
    POST /review/actions         judgements: the same events as POST /feedback, the reviewer named by the key
    POST /review/reject-key      reject every shown tag of a key across the filtered queue (with its count)
With a key file the page and every route under /review need a key with the `review` scope, in X-API-Key
or in the page's cookie. Every action is stored (committed to SQLite) before its reply.
"""
from __future__ import annotations

import json
import uuid
from typing import Literal
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..data.images import ImageError, resolve_image
from ..models.tag_tokenizer import CATEGORY_KEY
from ..feedback.events import MAX_ID_CHARS, MAX_TAG_CHARS, FeedbackEvent, explain
from ..feedback.review_queue import ORDERS, QueueFilter, counters, key_rejections, queue
from .access import KEY_COOKIE, guard, rate_limit

STATIC = Path(__file__).parent / "static"
MAX_ACTIONS = 10_000
PAGE_SIZE = 20


class ReviewAction(BaseModel):
    """One judgement from the page; the reviewer is the key's client (or the page's name field)."""

    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(max_length=MAX_ID_CHARS)
    product: str = Field(max_length=MAX_ID_CHARS)
    tag: str = Field(max_length=MAX_TAG_CHARS)
    action: str = Field(pattern="^(accept|reject|add|retract)$")


class ReviewActions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reviewer: str | None = Field(None, max_length=MAX_ID_CHARS, description="used when the service has no keys")
    actions: list[ReviewAction] = Field(max_length=MAX_ACTIONS)


class KeyRejection(BaseModel):
    """Reject `key` across the queue as filtered; `expected`: the count the reviewer confirmed."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=MAX_TAG_CHARS)
    request_id: str = Field(min_length=1, max_length=64, description="the same id again is stored once")
    expected: int | None = Field(None, ge=0, description="None: only count")
    reviewer: str | None = Field(None, max_length=MAX_ID_CHARS)
    category: str | None = None
    min_score: float = Field(0.0, ge=0.0, le=1.0)
    max_score: float = Field(1.0, ge=0.0, le=1.0)
    unreviewed: bool = False


def reviewer_of(request: Request, named: str | None) -> str:
    """The key's client, else the name the page sent; 422 naming the field when there is neither."""
    client = getattr(request.state, "client", None)
    if client is not None:
        return client.name
    if not named or not named.strip():
        raise HTTPException(422, "reviewer: give your name (the service has no keys to name you by)")
    return named.strip()


def review_routes(app: FastAPI, svc) -> None:
    """Add the page and its routes to the service's app."""
    review = guard(svc.cfg, "review", cookie=True)
    _page_routes(app, svc)
    _queue_routes(app, svc, review)
    _action_routes(app, svc, review)


def _page_routes(app: FastAPI, svc) -> None:
    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request) -> Response:
        if svc.cfg.keys is not None and svc.cfg.keys.client(request.headers.get("X-API-Key")
                                                            or request.cookies.get(KEY_COOKIE)) is None:
            return HTMLResponse((STATIC / "login.html").read_text(encoding="utf-8"), status_code=401)
        return HTMLResponse((STATIC / "review.html").read_text(encoding="utf-8"))

    @app.get("/review/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in {"review.js", "review.css"}:
            raise HTTPException(404, "name: no such file")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(STATIC / name, media_type=media)

    @app.post("/review/login", include_in_schema=False)
    async def login(request: Request, body: dict) -> Response:
        rate_limit(svc.cfg, request.client.host if request.client else "anonymous")  # no guessing keys at speed
        key = body.get("key") if isinstance(body, dict) else None
        if svc.cfg.keys is None:
            return Response(status_code=204)
        client = svc.cfg.keys.client(key if isinstance(key, str) else None)
        if client is None or "review" not in client.scopes:
            raise HTTPException(401, "key: not a key with the review scope")
        reply = Response(status_code=204)
        reply.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", path="/review")
        return reply


def _queue_routes(app: FastAPI, svc, review: list) -> None:
    @app.get("/review/queue", dependencies=review)
    async def review_queue(key: str | None = Query(None, max_length=MAX_TAG_CHARS),
                    category: str | None = Query(None, max_length=MAX_ID_CHARS),
                    min_score: float = Query(0.0, ge=0.0, le=1.0), max_score: float = Query(1.0, ge=0.0, le=1.0),
                    unreviewed: bool = False, offset: int = Query(0, ge=0), limit: int = Query(PAGE_SIZE, ge=1, le=200),
                    order: Literal[ORDERS] = "shop") -> dict:
        """The filtered queue's cards from `offset` in `order` (a stratified sample of the shop, or the
        most uncertain first), with the counters of the whole filtered queue."""
        flt = QueueFilter(key or None, category or None, min_score, max_score, unreviewed)

        def read():
            every, stats = svc.reads.review_cards()
            cards = queue(every, flt, order)
            return {"cards": cards[offset:offset + limit], "total": len(cards), "counters": counters(cards, stats)}
        return await svc.reads.run(read)

    @app.get("/review/photo/{product_id}", dependencies=review)
    async def photo(product_id: str) -> Response:
        path = await svc.reads.run(_photo_path, svc, product_id)
        if path is None:
            raise HTTPException(404, "product_id: no usable photo")
        return FileResponse(path)

    @app.get("/review/vocab", dependencies=review)
    async def vocab() -> dict:
        return await svc.model.run(_vocab, svc)


def _action_routes(app: FastAPI, svc, review: list) -> None:
    @app.post("/review/actions", dependencies=review)
    async def actions(request: Request, body: ReviewActions) -> dict:
        """Store the page's judgements (one transaction, before the reply); unknown products and tags are
        422s naming the action and field."""
        user = reviewer_of(request, body.reviewer)
        events = await svc.store.run(_events, svc, user, body.actions)
        return _stored(await svc.store.run(svc.store.add, events), events)

    @app.post("/review/reject-key", dependencies=review)
    async def reject_key(request: Request, body: KeyRejection) -> dict:
        """Count (no `expected`) or reject every shown tag of the key across the filtered queue; 409 when
        the count is no longer the one the reviewer confirmed."""
        user = reviewer_of(request, body.reviewer) if body.expected is not None else None
        flt = QueueFilter(body.key, body.category, body.min_score, body.max_score, body.unreviewed)
        pairs = await svc.reads.run(lambda: key_rejections(queue(svc.reads.review_cards()[0], flt), body.key))
        if body.expected is None:
            return {"count": len(pairs)}
        if body.expected != len(pairs):
            raise HTTPException(409, f"expected: the filtered queue now holds {len(pairs)} such tags, not "
                                     f"{body.expected}; count again")
        events = [FeedbackEvent(event_id=f"{body.request_id}:{uuid.uuid5(uuid.NAMESPACE_OID, pid + chr(0) + tag)}",
                                user=user, product=pid, tag=tag, action="reject") for pid, tag in pairs]
        return {**_stored(await svc.store.run(svc.store.add, events), events), "count": len(pairs),
                "event_ids": [e.event_id for e in events], "pairs": pairs}


def _stored(result, events: list[FeedbackEvent]) -> dict:
    refused = [{"index": i, "event_id": events[i].event_id, "reason": r} for i, r in result.refused]
    if refused and not (result.stored or result.duplicates):
        raise HTTPException(422, {"message": "no action was stored", "refused": refused})
    return {"stored": result.stored, "duplicates": result.duplicates, "refused": refused}


def _events(svc, user: str, actions: list[ReviewAction]) -> list[FeedbackEvent]:
    """(store thread) The actions as feedback events; 422 naming the first action a product or tag of
    which the store does not know (accept and reject judge a tag the product was shown or suggested)."""
    events = []
    for i, a in enumerate(actions):
        try:
            event = FeedbackEvent(event_id=a.event_id, user=user, product=a.product, tag=a.tag, action=a.action,
                                  model_id=None)
        except ValidationError as e:
            raise HTTPException(422, f"actions.{i}: {explain(e)}") from None
        row = svc.store.fb.tags.get(event.product)
        if row is None:
            raise HTTPException(422, f"actions.{i}.product: unknown product {event.product!r}")
        # a tag shown or suggested, or the category as a `category:` tag (feedback/adapt.py learns from it)
        known = {*row["tags"], *(row.get("review") or {}).get("suggested", {}), f"{CATEGORY_KEY}:{row['category']}"}
        if a.action in ("accept", "reject") and event.tag not in known:
            judged = svc.store.fb.judgements_of([event.product]).get(event.product, {})
            if event.tag not in judged:
                raise HTTPException(422, f"actions.{i}.tag: {event.tag!r} is not a tag of {event.product!r}")
        events.append(event.model_copy(update={"model_id": row["model_id"]}))
    return events


def _photo_path(svc, product_id: str) -> Path | None:
    """(read thread) The product's photo file, from the image root or the uploads folder, or None."""
    ref = (svc.reads.store.product_dicts([product_id]).get(product_id) or {}).get("image")
    if not ref:
        return None
    for root in (svc.cfg.image_root, svc.cfg.uploads):
        if root is None:
            continue
        try:
            return resolve_image(ref, Path(root))
        except ImageError:
            continue
    return None


def _vocab(svc) -> dict:
    """(model thread) Autocomplete and the model in use: the tags it knows (with those feedback added), its
    categories, and, for a model made by `mmtags adapt`, the gate's before and after on held-back products."""
    learner = svc.model.learner
    model = learner.tagger.model
    lineage_file = Path(svc.model.model_dir) / "lineage.json"
    lineage = json.loads(lineage_file.read_text(encoding="utf-8")) if lineage_file.exists() else None
    parent = (lineage or {}).get("parent")  # a trained (not adapted) model's lineage has none
    adapted = None if not parent else {"parent_model_id": parent.get("model_id"), "gate": lineage.get("gate"),
                                       "promoted": lineage.get("promoted"),
                                       "judged_products": lineage.get("feedback", {}).get("judged_products"),
                                       "held_back": lineage.get("feedback", {}).get("held_back")}
    return {"tags": sorted({*model.tags, *learner.calibration.new_tags}), "categories": sorted(model.categories),
            "model_id": learner.model_id, "adapted": adapted, "needs_name": svc.cfg.keys is None}
