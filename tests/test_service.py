"""The HTTP service with a tiny model: tagging (JSON and multipart), feedback, stored tags, statistics, bad
input (always a 4xx, never a 5xx: checked by hand and fuzzed from the OpenAPI schema)."""
import contextlib
import json
import os

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from conftest import SETTINGS, write_jpeg
from multimodal_tags.service.app import create_app
from multimodal_tags.service.auth import KeyRing
from multimodal_tags.service.runtime import ServiceConfig
from test_feedback import store_copy

KEY = "s3cret-key-of-the-tests"
MAX_EXAMPLES = int(os.environ.get("MMTAGS_EXAMPLES", 30))  # per operation


def _config(shop, tmp_path, **kw) -> ServiceConfig:
    return ServiceConfig(shop["model"], store_copy(shop, tmp_path), shop["root"] / "features-cache",
                         image_root=shop["image_root"], settings=SETTINGS, **kw)


@pytest.fixture
def client(shop, tmp_path):
    with TestClient(create_app(_config(shop, tmp_path, keys=KeyRing.single(KEY), max_body_bytes=200_000,
                                       index_refresh_s=0.0)),
                    headers={"X-API-Key": KEY}) as c:
        yield c


def _jpeg_bytes(tmp_path, colour=(200, 30, 40)) -> bytes:
    return write_jpeg(tmp_path / "photo.jpg", colour).read_bytes()


def test_a_product_sent_as_multipart_is_tagged_stored_and_judged(client, tmp_path):
    product = {"id": "new-1", "title": "Red Cotton T-Shirt", "description": "a red tee"}
    r = client.post("/tag", data={"product": json.dumps(product)},
                    files={"photo": ("photo.jpg", _jpeg_bytes(tmp_path), "image/jpeg")})
    assert r.status_code == 200, r.text
    row = r.json()
    assert row["id"] == "new-1" and row["category"] and row["model_id"]
    assert row["modality_weights"]["image"] > 0  # the photo was seen
    stored = client.get("/products/new-1/tags").json()
    assert stored["tags"].keys() == set(row["tags"])
    tag = (row["tags"] or ["colour:red"])[0]
    events = [{"event_id": "f1", "user": "u", "product": "new-1", "tag": tag, "action": "reject"},
              {"event_id": "f2", "user": "u", "product": "new-1", "tag": "fit:slim", "action": "add"}]
    assert client.post("/feedback", json=events).json() == {"stored": 2, "duplicates": 0, "refused": []}
    assert client.post("/feedback", json=events[0]).json()["duplicates"] == 1  # redelivered: stored once
    served = client.get("/products/new-1/tags").json()  # people overrule the model at once
    assert tag not in served["tags"] and served["tags"]["fit:slim"]["source"] == "feedback"
    assert served["judged"] == {tag: False, "fit:slim": True}
    assert "fit:slim" in client.post("/tag", json=product).json()["tags"]  # and when it is tagged again
    stats = client.get("/stats").json()
    assert (stats["judged"], stats["accepted"], stats["added"]) == (1, 0, 1)


def test_a_product_sent_as_json_with_a_photo_path_is_tagged(client, shop):
    p = shop["val"][0]
    r = client.post("/tag", json={"id": "again", "title": p.title, "image": p.image})
    assert r.status_code == 200 and r.json()["modality_weights"]["image"] > 0


@pytest.mark.parametrize("kwargs, status, field", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "body"),
    ({"json": ["a", "list"]}, 422, "body"),
    ({"json": {"title": "no id"}}, 422, "id"),
    ({"json": {"id": "x", "title": ["a", "list"]}}, 422, "title"),
    ({"json": {"id": "x", "title": "t", "image": "../../etc/passwd"}}, 422, "image"),
    ({"data": {"product": "{}"}, "files": {"photo": ("p.jpg", b"not an image", "image/jpeg")}}, 422, "photo"),
    ({"data": {"product": "not json"}, "files": {"photo": ("p.jpg", b"x", "image/jpeg")}}, 422, "product"),
    ({"content": b"x" * 300_000, "headers": {"content-type": "application/json"}}, 413, "body"),
    ({"content": b"<p/>", "headers": {"content-type": "text/html"}}, 415, "content-type"),
])
def test_bad_tag_requests_get_a_4xx_naming_the_field(client, kwargs, status, field):
    r = client.post("/tag", **kwargs)
    assert r.status_code == status, r.text
    assert field in json.dumps(r.json()["detail"])


def test_bad_feedback_is_refused_and_unknown_products_are_named(client, shop):
    pid = shop["val"][0].id
    r = client.post("/feedback", json={"event_id": "1", "user": "u", "product": "nope", "tag": "t", "action": "add"})
    assert r.status_code == 422 and "unknown product 'nope'" in r.text
    r = client.post("/feedback", json={"event_id": "1", "user": "u", "product": pid, "tag": "t", "action": "love"})
    assert r.status_code == 422 and "action" in r.text
    mixed = [{"event_id": "2", "user": "u", "product": pid, "tag": "t", "action": "add"},
             {"event_id": "3", "user": "u", "product": "nope", "tag": "t", "action": "add"}]
    body = client.post("/feedback", json=mixed).json()
    assert body["stored"] == 1 and body["refused"][0]["index"] == 1
    assert client.get("/products/nope/tags").status_code == 404
    odd = b'{"event_id": "4", "user": "\\ud800", "product": "%s", "tag": "t", "action": "add"}' % pid.encode()
    r = client.post("/feedback", content=odd, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "user" in r.text
    odd_product = b'{"id": "\\ud800", "title": "t"}'
    assert client.post("/tag", content=odd_product, headers={"content-type": "application/json"}).status_code == 422


def test_every_route_but_health_needs_a_key(client):
    event = {"event_id": "1", "user": "u", "product": "p", "tag": "t", "action": "add"}
    assert client.post("/feedback", json=event, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/tag", json={"id": "1", "title": "t"}, headers={"X-API-Key": ""}).status_code == 401
    for path in ("/stats", "/users/ann/recommendations", "/products/p/tags?user=ann", "/products/p/tags"):
        assert client.get(path, headers={"X-API-Key": ""}).status_code == 401, path
    assert client.get("/health", headers={"X-API-Key": ""}).json()["status"] == "ok"


def test_named_keys_have_scopes(shop, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# name scopes key\netl   write        etl-key-0123456789abcdef\n"
                    "ann   read,review  ann-key-0123456789abcdef\n")
    event = {"event_id": "e1", "user": "ann", "product": shop["val"][0].id, "tag": "colour:red", "action": "add"}
    with TestClient(create_app(_config(shop, tmp_path, keys=KeyRing.from_file(keys)))) as c:
        etl, ann = {"X-API-Key": "etl-key-0123456789abcdef"}, {"X-API-Key": "ann-key-0123456789abcdef"}
        assert c.post("/tag", json={"id": "n1", "title": "Red Tee"}, headers=etl).status_code == 200
        assert c.post("/tag", json={"id": "n2", "title": "Red Tee"}, headers=ann).status_code == 403
        assert c.get("/stats", headers=etl).status_code == 403 and c.get("/stats", headers=ann).status_code == 200
        assert c.post("/feedback", json=event, headers=ann).json()["stored"] == 1  # a reviewer judges
        r = c.post("/interactions", json={"event_id": "i1", "user": "ann", "product": "n1", "kind": "click"},
                   headers=ann)
        assert r.status_code == 403 and "ann" in r.json()["detail"]


def test_no_reply_names_a_server_path(client, shop):
    stats = client.get("/stats").json()
    assert str(shop["model"]) not in json.dumps(stats) and "model_dir" not in stats
    for ref in ("../../etc/passwd", "missing.jpg"):
        r = client.post("/tag", json={"id": "x", "title": "t", "image": ref})
        assert r.status_code == 422 and "image" in r.text
        for folder in (shop["image_root"], shop["image_root"].resolve()):
            assert str(folder) not in r.text, r.text


def test_concurrent_tag_requests_share_forward_passes(shop, tmp_path):
    import asyncio

    import httpx

    app = create_app(_config(shop, tmp_path, batch_wait_s=0.05))

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post("/tag", json={"id": f"c{i}", "title": p.title})
                                        for i, p in enumerate(shop["val"][:12])))
            return [r.status_code for r in rs], (await c.get("/stats")).json()

    codes, stats = asyncio.run(burst())
    assert codes == [200] * 12 and stats["tagged"] == 12 and stats["batches"] < 12


@pytest.fixture
def fuzz_app(shop, tmp_path):
    return create_app(_config(shop, tmp_path, max_body_bytes=100_000))


def test_fuzzed_requests_never_get_a_5xx(fuzz_app):
    """Every operation of the OpenAPI schema, with requests schemathesis generates from it (bounded)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: dict[int, int] = {}
    assert {op.path for op in operations} >= {"/tag", "/feedback", "/products/{product_id}/tags", "/stats"}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case):
            response = case.call()
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"

        no_server_error()
    assert sum(seen.values()) >= len(operations) and any(400 <= code < 500 for code in seen), seen


def test_a_promoted_model_is_swapped_in_without_dropping_requests(shop, tmp_path):
    import shutil

    from multimodal_tags.feedback.adapt import PROMOTED_KEY
    from multimodal_tags.tagging.tag_store import TagStore

    cfg = _config(shop, tmp_path, watch_s=0.0)
    child = tmp_path / "child-model"
    shutil.copytree(shop["model"], child)  # another folder: another model id
    with TestClient(create_app(cfg)) as c:
        first = c.post("/tag", json={"id": "s1", "title": "Red Mug"}).json()["model_id"]
        with TagStore(cfg.store_path) as store:
            store.set_meta(PROMOTED_KEY, str(child))
        second = c.post("/tag", json={"id": "s2", "title": "Red Mug"})
        assert second.status_code == 200 and second.json()["model_id"] != first
        assert second.json()["model_id"].startswith("child-model-")
        assert c.get("/health").json()["model_id"] == second.json()["model_id"]


def test_feedback_refits_the_calibration_in_the_background(shop, tmp_path):
    import time

    cfg = _config(shop, tmp_path, refit_every=1, refit_interval_s=0.0)
    with TestClient(create_app(cfg)) as c:
        pid = shop["val"][0].id
        r = c.post("/feedback", json={"event_id": "r1", "user": "u", "product": pid, "tag": "colour:red",
                                      "action": "reject"})
        assert r.status_code == 200
        for _ in range(100):
            if c.get("/stats").json()["calibration"]["events"] >= 1:
                break
            time.sleep(0.1)
        assert c.get("/stats").json()["calibration"]["events"] == 1


def _eventually(read, expected, timeout_s: float = 30.0):
    """`read()` until it gives `expected` (True), or its last value when `timeout_s` has passed."""
    import time

    deadline = time.monotonic() + timeout_s
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return value == expected


def test_tags_are_ranked_per_user_and_products_recommended_from_the_profile(client, shop):
    p0, p1 = shop["val"][0], shop["val"][1]
    for i, p in enumerate((p0, p1)):
        assert client.post("/tag", json={"id": f"r{i}", "title": p.title, "image": p.image}).status_code == 200
    tags0 = list(client.get("/products/r0/tags").json()["tags"])
    liked = tags0[-1] if tags0 else "colour:red"
    events = [{"event_id": f"u{i}", "user": "ann", "product": "r0", "tag": liked, "action": "add"} for i in range(1)]
    events += [{"event_id": f"v{i}", "user": "ann", "product": "r0", "tag": t, "action": "reject"}
               for i, t in enumerate(tags0[:-1])]
    assert client.post("/feedback", json=events).status_code == 200
    ranked = client.get("/products/r0/tags", params={"user": "ann"}).json()["ranked"]
    assert ranked[0] == liked
    stranger = client.get("/products/r0/tags", params={"user": "nobody"}).json()["ranked"]
    assert sorted(stranger) == sorted(ranked)
    bought = [{"event_id": f"b{i}", "user": "cy", "product": "r1", "kind": "purchase"} for i in range(3)]
    assert client.post("/interactions", json=bought).json()["counted"] == 3
    assert client.post("/interactions", json=bought[0]).json()["duplicates"] == 1
    assert _eventually(lambda: client.get("/users/cy/recommendations", params={"k": 1}).json()["products"][0]["id"],
                       "r1")  # the index follows the store within index_refresh_s
    r = client.post("/interactions", json={"event_id": "x", "user": "cy", "product": "nope", "kind": "purchase"})
    assert r.status_code == 422 and "unknown product 'nope'" in r.text
    recs = client.get("/users/ann/recommendations", params={"k": 1}).json()["products"]
    assert len(recs) == 1 and recs[0]["id"] in {"r0", "r1"} | {p.id for p in shop["val"]}
    assert client.get("/users/ann/recommendations", params={"k": 0}).status_code == 422


def test_input_that_breaks_parsers_is_a_4xx(client):
    nested = '{"id": "n", "title": "t", "extra": ' + "[" * 20_000 + "]" * 20_000 + "}"
    assert client.post("/tag", content=nested, headers={"content-type": "application/json"}).status_code == 400
    digits = '{"id": ' + "9" * 5000 + ', "title": "t"}'
    r = client.post("/tag", content=digits, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "body" in r.text
    r = client.post("/tag", files={"product": (None, "[" * 20_000)})  # multipart, a text field
    assert r.status_code == 422 and "product" in r.text


def test_a_refused_product_leaves_no_uploaded_photo_and_same_photo_uploads_do_not_race(shop, tmp_path):
    import asyncio

    import httpx

    cfg = _config(shop, tmp_path)
    app = create_app(cfg)
    photo = _jpeg_bytes(tmp_path, (10, 200, 30))

    def post(ac, product):
        return ac.post("/tag", data={"product": json.dumps(product)}, files={"photo": ("p.jpg", photo, "image/jpeg")})

    async def requests():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            refused = await post(ac, {"id": "", "title": "no id"})
            left = sorted(p.name for p in cfg.uploads.glob("*")) if cfg.uploads.exists() else []
            burst = await asyncio.gather(*(post(ac, {"id": f"s{i}", "title": "t"}) for i in range(8)))
            return refused.status_code, left, [r.status_code for r in burst]

    refused, left, codes = asyncio.run(requests())
    assert refused == 422 and left == []  # the refused product's photo is not kept
    assert codes == [200] * 8
    assert [p.suffix for p in cfg.uploads.iterdir()] == [".img"]  # one photo, no temporary file left


@contextlib.contextmanager
def _real_server(app, **settings):
    """The app under a real uvicorn on 127.0.0.1 (a free port), in a thread, with uvicorn `settings`;
    yields its address."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, **settings))  # log records reach caplog
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(30)


def test_aborted_uploads_are_one_log_line_each_on_a_real_server(shop, tmp_path, caplog):
    import logging
    import socket
    import time

    multipart = (b"POST /tag HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=XX\r\n"
                 b"Content-Length: 100000\r\n\r\n--XX\r\nContent-Disposition: form-data; name=\"photo\"; "
                 b"filename=\"p.jpg\"\r\n\r\n" + b"\xff\xd8" * 500)
    as_json = b"POST /tag HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 9000\r\n\r\n{\"id\": "
    with caplog.at_level(logging.WARNING), _real_server(create_app(_config(shop, tmp_path))) as address:
        for head in [multipart, as_json] * 3:
            with socket.create_connection(address, timeout=5) as c:
                c.sendall(head)  # then hang up mid-body
        time.sleep(1.0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]  # no traceback
    assert sum("disconnected" in r.getMessage() for r in caplog.records) <= 6


def test_a_body_that_stops_arriving_gets_408_on_a_real_server(shop, tmp_path):
    import socket

    with _real_server(create_app(_config(shop, tmp_path, body_timeout_s=1.0))) as address:
        with socket.create_connection(address, timeout=10) as c:
            c.sendall(b"POST /tag HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 500\r\n\r\n{\"id\": \"slow\", ")  # and nothing more
            reply = b""
            while b"no data" not in reply and (chunk := c.recv(4096)):  # headers and body may come apart
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"no data for 1 s" in reply


@pytest.mark.parametrize("head, status", [
    (b"Content-Length: 500\r\n\r\n[{", b"408"),  # stops arriving
    (b"Transfer-Encoding: chunked\r\n\r\n", b"413"),  # grows past the limit, chunk by chunk
])
def test_a_json_route_says_408_or_413_too(shop, tmp_path, head, status):
    """FastAPI turns an error while reading a JSON body into a 400; the limit is still named."""
    import socket

    app = create_app(_config(shop, tmp_path, body_timeout_s=1.0, max_body_bytes=1000))
    with _real_server(app) as address:
        with socket.create_connection(address, timeout=10) as c:
            c.sendall(b"POST /feedback HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + head)
            if status == b"413":
                chunk = b"[" + b" " * 700
                for _ in range(3):
                    c.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            reply = b""
            while b"body:" not in reply and (part := c.recv(4096)):
                reply += part
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]


def test_each_key_has_its_own_rate_limit(shop, tmp_path):
    from multimodal_tags.service.limits import RateLimiter

    keys = tmp_path / "keys"
    keys.write_text("a read aaaaaaaaaaaaaaaaaaaa\nb read bbbbbbbbbbbbbbbbbbbb\n")
    cfg = _config(shop, tmp_path, keys=KeyRing.from_file(keys), limiter=RateLimiter(rate=0.01, burst=3))
    with TestClient(create_app(cfg)) as c:
        codes = [c.get("/stats", headers={"X-API-Key": "a" * 20}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/stats", headers={"X-API-Key": "a" * 20})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "'a'" in r.json()["detail"]
        assert c.get("/stats", headers={"X-API-Key": "b" * 20}).status_code == 200  # another client goes on
        assert c.get("/health").status_code == 200


def test_a_multipart_product_that_is_not_utf8_is_refused(client):
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"product\"\r\n\r\n".encode()
            + b'{"id": "latin", "title": "caf\xe9"}' + f"\r\n--{boundary}--\r\n".encode())
    r = client.post("/tag", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 422 and "product: not UTF-8 (byte 0xe9" in r.json()["detail"]
    ok = body.replace(b"caf\xe9", "café".encode())
    r = client.post("/tag", content=ok, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200 and r.json()["id"] == "latin"


def test_fuzzed_multipart_uploads_never_get_a_5xx(fuzz_app, tmp_path):
    """The multipart form of /tag (schemathesis generates JSON bodies for it): product fields of any
    text or JSON, photos of any bytes or a real JPEG cut anywhere."""
    from hypothesis import strategies as st

    jpeg = _jpeg_bytes(tmp_path)
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=8)
    products = st.one_of(st.text(max_size=200), json_values.map(json.dumps),
                         st.fixed_dictionaries({"id": st.text(max_size=30) | st.integers(), "title": st.text(max_size=50)},
                                               optional={"image": st.text(max_size=30)}).map(json.dumps))
    photos = st.one_of(st.none(), st.binary(max_size=300), st.integers(0, len(jpeg)).map(lambda n: jpeg[:n]))
    seen: dict[int, int] = {}
    with TestClient(fuzz_app) as client:
        @given(product=products, photo=photos)
        @settings(max_examples=MAX_EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(product, photo):
            files = {"product": (None, product)} | ({"photo": ("p.jpg", photo, "image/jpeg")} if photo is not None else {})
            r = client.post("/tag", files=files)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, r.text[:300]

        no_server_error()
    assert any(400 <= code < 500 for code in seen), seen


def test_the_background_process_starts_again_after_it_died():
    import signal
    from concurrent.futures.process import BrokenProcessPool

    from multimodal_tags.service.background import BackgroundProcess

    worker = BackgroundProcess()
    try:
        pid = worker.submit(os.getpid).result(timeout=60)
        assert pid != os.getpid()
        dying = worker.submit(__import__("time").sleep, 30)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            dying.result(timeout=60)
        assert worker.submit(abs, -3).result(timeout=60) == 3  # a new process
    finally:
        worker.shutdown()


def test_a_failed_index_rebuild_leaves_the_previous_index_serving(shop, tmp_path):
    import dataclasses
    from concurrent.futures import Future

    from multimodal_tags.service.runtime import ReadThread

    logged = []
    cfg = _config(shop, tmp_path)
    cfg.settings = dataclasses.replace(SETTINGS, log=logged.append)
    read = ReadThread(cfg)
    try:
        before = read.index
        failed = Future()
        failed.set_exception(RuntimeError("the builder died"))
        read.building = failed
        assert isinstance(read.pool.submit(read.recommendations, "ann", 3).result(), list)
        assert read.index is before and read.building is None
        assert any("rebuild failed" in line and "the builder died" in line for line in logged)
    finally:
        read.close()


def _get(c, path: bytes = b"/health") -> bytes:
    """One GET on an open connection: its whole reply (head and Content-Length bytes of body)."""
    c.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    reply = b""
    while b"\r\n\r\n" not in reply and (part := c.recv(4096)):
        reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (part := c.recv(4096)):
        body += part
    return head + b"\r\n\r\n" + body


def test_connections_are_bounded_on_a_real_server(shop, tmp_path):
    """`mmtags serve`'s uvicorn limits: idle connections close, and past the limit a request gets a 503."""
    import socket
    import time

    from multimodal_tags.service.limits import uvicorn_limits

    with _real_server(create_app(_config(shop, tmp_path)), **uvicorn_limits(keep_alive_s=0.5, max_connections=3)) \
            as address:
        with socket.create_connection(address, timeout=10) as idle:
            assert _get(idle).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)
            assert idle.recv(1) == b""  # closed by the server after keep_alive_s
        held = [socket.create_connection(address, timeout=10) for _ in range(3)]
        time.sleep(0.3)  # accepted
        with socket.create_connection(address, timeout=10) as extra:
            assert _get(extra).startswith(b"HTTP/1.1 503")
        for c in held:
            c.close()
        time.sleep(0.3)
        with socket.create_connection(address, timeout=10) as again:
            assert _get(again).startswith(b"HTTP/1.1 200")
