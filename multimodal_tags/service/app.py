"""The FastAPI app of `mmtags serve`: tag products, take feedback, read tags and statistics.

    POST /tag                 a product as JSON (photo: a path inside the image root), or multipart
                              with `product` (JSON) and `photo` (the file); returns its tags
    POST /feedback            one event or a list (feedback/events.py); stored before the reply
    GET  /products/{id}/tags  the stored tags of a product
    GET  /stats               acceptance rate (overall, per tag key, over time), batching, model
    GET  /health              liveness and the model in use
    GET  /review              the review page (service/review.py: its routes are under /review)
Bad input gets a 4xx naming the field. With API keys (service/auth.py) every route but /health needs one
in X-API-Key, with the scope the route names (read, write, review); no reply names a server path.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from ..feedback.events import FeedbackEvent, Interaction
from .access import guard, without_server_paths
from .batching import TagBatcher
from .limits import BodyLimit
from .requests import read_product
from .review import review_routes
from .runtime import ModelThread, ReadThread, ServiceConfig, StoreThread

MAX_EVENTS_PER_REQUEST = 10_000
LOG = logging.getLogger("multimodal_tags.service")


class ProductIn(BaseModel):
    """A product to tag (the catalog's fields; unknown fields are kept as extra)."""

    id: str | int = Field(description="the product's id in the shop")
    title: str = ""
    description: str = ""
    image: str | None = Field(None, description="a photo path inside the service's image root")
    category: str | None = None
    language: str = ""


TAG_BODY = {"required": True, "content": {
    "application/json": {"schema": ProductIn.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["product"], "properties": {
        "product": {"type": "string", "description": "the product as JSON"},
        "photo": {"type": "string", "format": "binary"}}}}}}


class Service:
    """What the routes share: the config, the model and store threads, the batcher."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg, self.started = cfg, time.time()
        self.model, self.store, self.reads = ModelThread(cfg), StoreThread(cfg), ReadThread(cfg)
        self.batcher = TagBatcher(lambda groups: self.model.run(self.model.tag, groups), cfg.max_batch,
                                  cfg.batch_wait_s)
        self.background: set[asyncio.Task] = set()  # re-fits in flight (kept referenced until done)

    async def close(self) -> None:
        await self.batcher.stop()
        self.model.close()
        self.store.close()
        self.reads.close()

    def stats(self) -> dict:
        """Feedback statistics (store thread) with the batching counters and the model's calibration."""
        cal = self.model.learner.calibration
        return {**self.store.fb.stats(), "model_id": self.model.learner.model_id,
                "batches": self.batcher.batches, "tagged": self.batcher.products,
                "mean_batch": self.batcher.products / max(self.batcher.batches, 1),
                "calibration": {"events": cal.events, "rules": len(cal.rules), "new_tags": sorted(cal.new_tags)}}


def create_app(cfg: ServiceConfig) -> FastAPI:
    """The service over one model and one store (the model loads here, before the first request)."""
    svc = Service(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await svc.close()

    app = FastAPI(title="multimodal_tags", version="1", lifespan=lifespan,
                  description="Tags for products from their text and photos, learning from feedback.")
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes, read_timeout_s=cfg.body_timeout_s)
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """422 naming each bad field. The input is not echoed (it may be huge), and the body is ASCII-escaped
        JSON: a lone surrogate in a field must not turn a 422 into a 500."""
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
                  for e in exc.errors()]
        return Response(json.dumps({"detail": detail}, default=str), status_code=422, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """The usual {"detail": ...}, ASCII-escaped (a message quoting bad input stays a valid response), with
        the server's own folders replaced by their role: no reply names a server path."""
        body = without_server_paths(json.dumps({"detail": exc.detail}, default=str), cfg)
        return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        """A client that goes away mid-body (an aborted upload) is one log line, not a traceback."""
        LOG.warning("%s %s: the client disconnected before sending the whole body", request.method,
                    request.url.path)
        return Response(status_code=400)  # nobody is there to read it

    _write_routes(app, svc)
    _read_routes(app, svc)
    review_routes(app, svc)
    return app


def _write_routes(app: FastAPI, svc: Service) -> None:
    @app.post("/tag", openapi_extra={"requestBody": TAG_BODY}, dependencies=guard(svc.cfg, "write"))
    async def tag(request: Request) -> dict:
        """Tag one product; its tags are stored (and feedback on them accepted) before the reply."""
        product, root = await read_product(request, svc.cfg)
        row = await svc.batcher.tag(product, root)
        await svc.store.run(svc.store.write_rows, [row], [product])
        return row

    @app.post("/feedback", dependencies=guard(svc.cfg, "write", "review"))
    async def feedback(events: FeedbackEvent | list[FeedbackEvent]) -> dict:
        """Store judgements (one event or a list), committed before the reply; a redelivered event_id
        is stored once. Every `refit_every` events the calibration is re-fitted in the background."""
        events = events if isinstance(events, list) else [events]
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise HTTPException(413, f"at most {MAX_EVENTS_PER_REQUEST} events per request")
        result = await svc.store.run(svc.store.add, events)
        if svc.store.take_refit_due(svc.cfg.refit_every, svc.cfg.refit_interval_s):
            svc.background.add(task := asyncio.get_running_loop().create_task(svc.model.refit()))
            task.add_done_callback(svc.background.discard)
        refused = [{"index": i, "event_id": events[i].event_id, "reason": r} for i, r in result.refused]
        if refused and not (result.stored or result.duplicates):
            raise HTTPException(422, {"message": "no event was stored", "refused": refused})
        return {"stored": result.stored, "duplicates": result.duplicates, "refused": refused}


    @app.post("/interactions", dependencies=guard(svc.cfg, "write"))
    async def interactions(events: Interaction | list[Interaction]) -> dict:
        """Purchases and clicks (one or a list), counted in the users' profiles over the products' tags."""
        events = events if isinstance(events, list) else [events]
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise HTTPException(413, f"at most {MAX_EVENTS_PER_REQUEST} interactions per request")
        result = await svc.store.run(svc.store.add_interactions, events)
        refused = [{"index": i, "event_id": events[i].event_id, "reason": r} for i, r in result.refused]
        if refused and not (result.stored or result.duplicates):
            raise HTTPException(422, {"message": "no interaction was counted", "refused": refused})
        return {"counted": result.stored, "duplicates": result.duplicates, "refused": refused}


def _read_routes(app: FastAPI, svc: Service) -> None:
    read = guard(svc.cfg, "read")

    @app.get("/products/{product_id}/tags", dependencies=read)
    async def product_tags(product_id: str, user: str | None = Query(None, max_length=256)) -> dict:
        """The product's current tags, with scores, sources and the model that gave them; `judged`: what
        feedback said of its tags (the served tags already follow it); with `user`, `ranked`: its tags
        in the order of that user's profile (the global order for an unknown user)."""
        row = await svc.store.run(svc.store.current_tags, product_id, user)
        if row is None:
            raise HTTPException(404, f"unknown product {product_id!r}")
        return row

    @app.get("/users/{user}/recommendations", dependencies=read)
    async def recommendations(user: str, k: int = Query(10, ge=1, le=1000)) -> dict:
        """The products whose tags best match the user's profile."""
        return {"user": user, "products": await svc.reads.run(svc.reads.recommendations, user, k)}

    @app.get("/stats", dependencies=read)
    async def stats() -> dict:
        """Users' acceptance of proposed tags (overall, per tag key, over time), batching, the model."""
        return await svc.store.run(svc.stats)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model_id": svc.model.learner.model_id,
                "uptime_s": round(time.time() - svc.started, 1)}
