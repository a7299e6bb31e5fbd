"""The service under load, killed and restarted: is every acknowledged feedback event stored?

    python experiments/service_load.py --out OUT [--model MODEL_DIR]

Starts `mmtags serve` on 127.0.0.1, drives it with locust (headless, bounded users, a time limit),
mixing `/tag` (products of the model's catalog) and `/feedback` (judgements of the tags just
received, in lists; 5% are redeliveries). Mid-load the server is killed with SIGKILL (--kills times),
restarted on the same store, and the load goes on. Afterwards every event id the service
acknowledged is looked up in the store. Without --model, a small model is first trained on the
synthetic shop (real offline encoders). Writes OUT/results.json (requests, acked_events,
stored_events, lost_events, status_5xx, tag_p50_ms, tag_p99_ms, tag_per_s, kills) and OUT/results.md.

`--mixed` adds shoppers (recommendations and interactions) beside the reviewers, and a burst of slow
clients (connections that send part of a request, then nothing) in the middle of the run; results gain
`p99_ms_by_route` (from locust's statistics), `feedback_p99_ms` and `slow_clients` (how each ended).
Run it with `--kills 0` to time the routes without restarts.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from multimodal_tags.config import TrainConfig
from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.importers import generic, run_import
from multimodal_tags.data.synthetic import SYNTHETIC_MAPPING, SYNTHETIC_TAG_COLUMNS, make_synthetic_export
from multimodal_tags.features import RunConfig
from multimodal_tags.files import remove_sqlite
from multimodal_tags.models.presets import get_preset
from multimodal_tags.feedback.feedback_store import FeedbackStore
from multimodal_tags.tagging.tag_store import TagStore
from multimodal_tags.train.job import train_tagger

from experiments.common import markdown_table

HERE = Path(__file__).resolve().parent


def small_model(out: Path) -> tuple[Path, Path]:
    """A model trained on the synthetic shop (reused when present); returns it and its catalog."""
    catalog = out / "shop" / "catalog.jsonl"
    if not catalog.exists():
        export = make_synthetic_export(out / "shop" / "export", n=600)
        run_import(generic.read(export, mapping=SYNTHETIC_MAPPING, tag_columns=SYNTHETIC_TAG_COLUMNS), catalog)
    model = out / "shop" / "run" / "model"
    if not (model / "config.json").exists():
        train_tagger(catalog, out / "shop" / "run", get_preset("offline"), TrainConfig(epochs=8, batch_size=32, lr=2e-3),
                     RunConfig(progress=False))
    return model, catalog


def load_products(catalog: Path, out: Path, n: int) -> tuple[Path, Path]:
    """Up to n products of the catalog (test split first) as /tag request bodies; returns them and the image root."""
    cat = read_catalog(catalog)
    ordered = sorted(cat.products, key=lambda p: p.split != "test")[:n]
    path = out / "load_products.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for p in ordered:
            f.write(json.dumps({"id": p.id, "title": p.title, "description": p.description, "image": p.image},
                               ensure_ascii=False) + "\n")
    return path, cat.image_root


class Server:
    """`mmtags serve` as a child process."""

    def __init__(self, args: list[str], port: int, log: Path):
        self.args, self.port, self.log = args, port, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> float:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "multimodal_tags.cli", "serve", *self.args,
                                      "--port", str(self.port)], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {self.log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return time.perf_counter() - t0
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"the server did not come up in {timeout}s; see {self.log}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def run_locust(host: str, products: Path, out: Path, a: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "MMTAGS_LOAD_PRODUCTS": str(products), "MMTAGS_LOAD_OUT": str(out / "locust_client.json")}
    if a.mixed:
        env["MMTAGS_LOAD_MIXED"] = "1"
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "service_locustfile.py"), "--headless",
           "-u", str(a.users), "-r", str(a.users), "--run-time", f"{a.seconds}s", "--host", host,
           "--csv", str(out / "locust"), "--only-summary", "--stop-timeout", "10"]
    return subprocess.Popen(cmd, env=env, stdout=open(out / "locust.log", "wb"), stderr=subprocess.STDOUT)


class SlowBurst:
    """`n` connections that send the start of a request body, then nothing, from `start_s` for `hold_s`
    seconds (a slow-client attack): records how each ended (a status line, closed, or still open)."""

    def __init__(self, port: int, n: int, start_s: float, hold_s: float):
        import threading

        self.port, self.n, self.start_s, self.hold_s, self.ends = port, n, start_s, hold_s, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import socket

        time.sleep(self.start_s)
        socks = []
        for _ in range(self.n):
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                s.sendall(b"POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n[{")
                socks.append(s)
            except OSError:
                self.ends.append("refused")
        time.sleep(self.hold_s)
        for s in socks:
            s.settimeout(0.5)
            try:
                first = s.recv(64)
                self.ends.append(first.split(b"\r\n")[0].decode("latin-1") if first else "closed")
            except OSError:
                self.ends.append("still open")
            s.close()

    def outcomes(self) -> dict[str, int]:
        self.thread.join(timeout=60)
        return {end: self.ends.count(end) for end in sorted(set(self.ends))}


def route_p99(stats_csv: Path) -> dict:
    """p99 latency per route from locust's statistics CSV, and the feedback route's on its own."""
    import csv

    with open(stats_csv, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] != "Aggregated"]
    by_route = {f"{r['Type']} {r['Name']}": float(r["99%"]) for r in rows if r["99%"] not in ("", "N/A")}
    return {"p99_ms_by_route": by_route, "feedback_p99_ms": by_route.get("POST /feedback")}


def stored(store: Path, ids: list[str]) -> int:
    """How many of these event ids the store holds."""
    with FeedbackStore(store) as fb:
        have = {row[0] for row in fb.db.execute("SELECT event_id FROM feedback")}
    return sum(i in have for i in ids)


def summarise(client: dict, store: Path, kills: int, restart_s: list[float], a) -> dict:
    acked = client["acked"]
    codes = {k: v for k, v in client["codes"].items()}
    tag_ms = np.array(client["tag_ms"] or [float("nan")])
    ok_times = sorted(client["tag_ok_times"])
    span = ok_times[-1] - ok_times[0] if len(ok_times) > 1 else float("nan")
    n_stored = stored(store, acked)
    with FeedbackStore(store) as fb:
        total = fb.count()
    return {"requests": sum(codes.values()), "status_codes": codes, "acked_events": len(acked),
            "stored_events": n_stored, "lost_events": len(acked) - n_stored, "events_in_store": total,
            "status_5xx": sum(v for k, v in codes.items() if k.isdigit() and int(k) >= 500),
            "no_response": codes.get("no response", 0), "tag_requests_ok": len(client["tag_ms"]),
            "tag_p50_ms": float(np.percentile(tag_ms, 50)), "tag_p99_ms": float(np.percentile(tag_ms, 99)),
            "tag_per_s": len(ok_times) / span if span == span and span > 0 else 0.0,
            "kills": kills, "restart_s": restart_s, "users": a.users, "seconds": a.seconds,
            "server_threads": a.threads}


def markdown(r: dict) -> str:
    rows = [("requests", r["requests"]), ("acknowledged feedback events", r["acked_events"]),
            ("of them stored", r["stored_events"]), ("lost (acknowledged, not stored)", r["lost_events"]),
            ("5xx responses", r["status_5xx"]), ("no response (server down)", r["no_response"]),
            ("SIGKILLs", r["kills"]), ("/tag p50 ms", f"{r['tag_p50_ms']:.0f}"),
            ("/tag p99 ms", f"{r['tag_p99_ms']:.0f}"), ("/tag per s", f"{r['tag_per_s']:.1f}")]
    rows += [(f"p99 ms {route}", f"{ms:.0f}") for route, ms in r.get("p99_ms_by_route", {}).items()]
    rows += [(f"slow clients: {end}", n) for end, n in r.get("slow_clients", {}).items()]
    return markdown_table([{"measure": k, "value": v} for k, v in rows]) + "\n"


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, help="a model folder (default: train a small one on the synthetic shop)")
    ap.add_argument("--catalog", type=Path, help="products to tag (default: the model's catalog)")
    ap.add_argument("--cache", type=Path, help="feature cache (default: the catalog's)")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=90)
    ap.add_argument("--kills", type=int, default=2, help="SIGKILLs of the server during the load")
    ap.add_argument("--products", type=int, default=2000)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--mixed", action="store_true", help="add shoppers and a burst of slow clients")
    ap.add_argument("--threads", type=int, default=1, help="the server's model threads (`mmtags serve --threads`)")
    ap.add_argument("--slow-clients", type=int, default=100, help="connections of the slow burst (--mixed)")
    ap.add_argument("--prefill", type=int, default=0, help="synthetic tagged products in the store before the load "
                    "(44000: Myntra's size, for the recommendations of --mixed)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.model is None:
        model, catalog = small_model(a.out)
    else:
        from multimodal_tags.feedback.adapt import training_catalog
        model, catalog = a.model, a.catalog or training_catalog(a.model, None)
    products, image_root = load_products(catalog, a.out, a.products)
    store = a.out / "service.db"
    remove_sqlite(store)
    if a.prefill:  # a catalog-sized store, so recommendations scan (or index) that many products
        from experiments.recommend_speed import fill
        with TagStore(store) as s:
            fill(s, a.prefill, random.Random(0))
    cache = a.cache or catalog.resolve().parent / "features-cache"
    server = Server(["--model", str(model), "--store", str(store), "--create", "--threads", str(a.threads),
                     "--image-root", str(image_root),
                     "--cache", str(cache)], a.port, a.out / "server.log")
    restart_s = [round(server.start(), 1)]
    locust = run_locust(f"http://127.0.0.1:{a.port}", products, a.out, a)
    kills, slow = 0, None
    if a.mixed:
        slow = SlowBurst(a.port, a.slow_clients, start_s=a.seconds / 4, hold_s=a.seconds / 2)
    try:
        for k in range(a.kills):  # evenly spread through the run
            time.sleep(a.seconds / (a.kills + 1))
            server.kill()
            kills += 1
            print(f"SIGKILL {kills}; restarting", flush=True)
            restart_s.append(round(server.start(), 1))
        locust.wait(timeout=a.seconds + 120)
    finally:
        server.stop()
        if locust.poll() is None:
            locust.terminate()
    client = json.loads((a.out / "locust_client.json").read_text())
    results = summarise(client, store, kills, restart_s, a)
    if a.mixed:
        results |= route_p99(a.out / "locust_stats.csv") | {"slow_clients": slow.outcomes()}
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (a.out / "results.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
