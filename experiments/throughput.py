"""Products per second from raw products (text + photo file) to tags, cold, three ways in one run.

    python experiments/throughput.py --data ../shared/datasets/fashion-myntra --out OUT

(a) naive: one product at a time: its photo decoded, text and photo through the encoders with their
    stock preprocessing (timm's default input size, 224 px for EfficientNet-Lite0), the tagger, and
    transformers' own `generate` (TagDecoder.generate_stock: the decoder's rules as a logits processor);
(b) stock batched: the same on batches of --batch products;
(c) the project's path: `BatchTagger.tag_stream` on the same batches, as `mmtags tag` runs it: from an
    empty feature cache (features written to it), photos at the model's `image_size`, decoded ahead by
    as many processes as `mmtags tag` starts on this machine (none on 2 cores), the project's
    constrained KV-cache decoding, its encoders compiled (`--compile`, models/compiled.py); also timed
    with the other choice (one process, or none), into a second empty cache.
Where the model's photo size is not the stock one, (b) also runs at the model's size ("stock at the
model's photo size"): the part of the speed that is the smaller photo, not the code. On the same
inputs the paths give the same tags in float32 (tests); here the share of products with the same
tags as (c) is reported for the paths that see the same inputs (in bf16, results depend slightly on
the batch's shape, and a random tagger has near ties). The preset follows the
device (`--device`, default: a GPU where there is one): on a CPU the offline default (MiniLM-L6 +
EfficientNet-Lite0 + word scores + a 3-layer GPT-2), on a GPU `full` (BERT-base + CLIP ViT-B/32 +
GPT-2 small; with --allow-random-weights their architectures with random weights, which is fine for
timing: `timing_config`), batches of 256 and the decoder at fixed shapes with CUDA graphs
(`--decoding`, models/static_decode.py). Unless --model names a trained folder, the tagger's own
weights are random (the output says so). Every path is warmed up untimed at the timed batch shape
(the project on a throwaway cache: `warm_up`); the project's timed runs start from empty caches. Also
measured in the same run: FLOPs per product (torch.utils.flop_counter on one stock batch), the device's
float32 matmul rate, and peak memory. Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from multimodal_tags.config import COMPILE_MODES, DECODING_MODES, ModelConfig
from multimodal_tags.data.catalog import read_catalog
from multimodal_tags.data.images import check_image, load_image
from multimodal_tags.data.importers import myntra, run_import
from multimodal_tags.data.vocab import build_vocab
from multimodal_tags.features import EncoderSet, RunConfig
from multimodal_tags.features.prefetch import default_workers
from multimodal_tags.features.source import FeatureSource
from multimodal_tags.inference.batch_tagger import BatchTagger
from multimodal_tags.inference.rows import prediction_rows, score_rows
from multimodal_tags.models.factory import create_image_encoder
from multimodal_tags.models.image_encoders import TimmImageEncoder
from multimodal_tags.models.onnx_text import onnx_available
from multimodal_tags.models.presets import get_preset
from multimodal_tags.models.static_decode import resolve_decoding
from multimodal_tags.models.tagger import Tagger, build_tokenizer
from multimodal_tags.tagging.tag_job import batches

from experiments.common import markdown_table, run_facts


def load_products(a) -> tuple[list, Path]:
    """The first --products test products with a photo (Myntra imported, or any catalog)."""
    if a.catalog:
        catalog = read_catalog(a.catalog)
        products, root = catalog.products, catalog.image_root
    else:
        source = myntra.read(a.data)
        products, root = run_import(source).products, source.image_root
    chosen = [p for p in products if p.split == "test" and p.image][:a.products]
    return chosen or [p for p in products if p.image][:a.products], root


def timing_config(preset: str, allow_random: bool) -> ModelConfig:
    """The preset's config; with `allow_random`, `full` becomes its twin with random weights, which needs no
    download: BERT-base's and ViT-B/32's architectures and a 12-layer, 768-wide GPT-2 (GPT-2 small) over
    the closed tag vocabulary (the open one needs GPT-2's BPE files). Timing only: results say so."""
    cfg = get_preset(preset)
    if preset == "full" and allow_random:
        cfg.text_encoder, cfg.image_encoder, cfg.tag_decoder = "bert-base@random", "open_clip:ViT-B-32@random", "closed"
        cfg.decoder = dataclasses.replace(cfg.decoder, gpt2="scratch", n_layer=12, n_embd=768, n_head=12)
    return cfg


def build_model(products, preset: str, out: Path, given: Path | None, image_size: int | None,
                allow_random: bool = False) -> Path:
    """The model folder to time: --model, or the preset (photos at `image_size` if given; see timing_config)
    with seeded random tagger weights."""
    if given:
        return given
    cfg = timing_config(preset, allow_random)
    if image_size:
        cfg.image_size = image_size
    vocab = build_vocab(products, split=None)
    torch.manual_seed(0)
    model = Tagger(cfg, sorted({p.category for p in products}), vocab,
                   build_tokenizer(cfg, vocab, [p.tags for p in products]))
    return model.save(out / "model")


def stock_encoders(encoders: EncoderSet) -> SimpleNamespace:
    """The model's encoders, the image encoder with timm's default preprocessing (its stock photo size)."""
    image = encoders.image
    if encoders.image_size is not None:
        image = create_image_encoder(encoders.image_spec).to(image.device).set_precision(image.precision)
    return SimpleNamespace(text=encoders.text, image=image)


@contextlib.contextmanager
def stock_modules(encoders):
    """The encoders as their libraries run them: eager, with no batch norms folded into convolutions (the
    project's levers: models/compiled.py, and models/bn_fold.py for fp32)."""
    timm_encoders = [m for m in encoders.image.modules() if isinstance(m, TimmImageEncoder)]
    folds = [m.fold for m in timm_encoders]
    for m in timm_encoders:
        m.fold = False
    try:
        with encoders.text.eager(), encoders.image.eager():
            yield
    finally:
        for m, fold in zip(timm_encoders, folds):
            m.fold = fold


def stock_batch(tagger: Tagger, encoders, products, root: Path, model_id: str) -> list[dict]:
    """One batch through the stock calls: PIL decode, each encoder's `encode`, the tagger, stock generate."""
    images = [load_image(p.image, root) for p in products]
    with stock_modules(encoders):
        text = encoders.text.encode([p.text for p in products]).pooled
        image = encoders.image.encode(images).pooled
    ones = np.ones(len(products), dtype=bool)
    source = FeatureSource(products, {"text": text.numpy(), "image": image.numpy(), "has_text": ones,
                                      "has_image": ones}, tagger.cfg)
    raw = tagger.predict_raw(source.batch(), stock_generate=True)
    return prediction_rows(products, tagger.prediction_dicts(raw), "decoder", model_id)


def warmed(model_dir: Path, cache: Path, settings: RunConfig, products: list, root: Path) -> BatchTagger:
    """A project tagger into the empty `cache`, its one-off costs paid on `products` (see warm_up)."""
    project = BatchTagger(model_dir, cache, settings, "decoder")
    warm_up(project, products, root, cache.with_name(cache.name + "-warm-up"))
    return project


def warm_up(project: BatchTagger, products: list, root: Path, cache: Path) -> float:
    """Seconds of one project batch into a throwaway cache, untimed as loading a model is: what a
    process does once (compiling the decoder's CUDA graphs, first kernel choices), not per product. The
    timed runs still start from an empty cache of their own."""
    cold, project.cache_dir = project.cache_dir, cache
    t0 = time.perf_counter()
    try:
        project.tag(products, root)
    finally:
        project.cache_dir = cold
        shutil.rmtree(cache, ignore_errors=True)
    return time.perf_counter() - t0


def timed(fn, items: list, size: int) -> tuple[list[dict], float]:
    """Rows of fn over `items` in chunks of `size`, and products per second."""
    rows, t0 = [], time.perf_counter()
    for i in range(0, len(items), size):
        rows += fn(items[i:i + size])
    return rows, len(items) / (time.perf_counter() - t0)


def streamed(project: BatchTagger, products: list, root: Path, size: int, workers: int) -> tuple[list[dict], float]:
    """(c): rows of `BatchTagger.tag_stream` over batches of `size` (photos decoded ahead by `workers`
    processes), and products per second."""
    rows, t0 = [], time.perf_counter()
    for _, batch_rows in project.tag_stream(batches(products, size), root, workers):
        rows += batch_rows
    return rows, len(products) / (time.perf_counter() - t0)


def flops_per_product(tagger, encoders, products, root, model_id) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        stock_batch(tagger, encoders, products, root, model_id)
    return counter.get_total_flops() / len(products)


def matmul_rate(device: str, n: int = 2048, repeats: int = 5) -> float:
    """float32 matmul FLOP/s of the device, measured now."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def large_photos(products: list, root: Path, out: Path, n: int, seed: int = 0) -> tuple[list, Path]:
    """Copies of the first `n` products whose photos are real photos upscaled to a random side of 1,500 to
    3,000 px (JPEG, quality 90), as real shops' photos are: written under OUT (never the repository)."""
    import random

    folder = out / "large-photos"
    folder.mkdir(parents=True, exist_ok=True)
    rng, chosen = random.Random(seed), []
    for p in products[:n]:
        name = f"{p.id}.jpg"
        if not (folder / name).exists():
            im = load_image(p.image, root)
            side = rng.randint(1500, 3000)
            scale = side / max(im.size)
            im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC).save(folder / name, quality=90)
        # the hash of the new file: a product without one is tagged as having no photo
        chosen.append(dataclasses.replace(p, image=name, image_hash=check_image(name, folder)))
    return chosen, folder


def large_photo_row(a, tagger, encoders, products: list, root: Path, model_dir: Path, settings, model_id: str,
                    workers: int) -> dict:
    """Large photos: the stock path (each photo decoded whole, then resized) against the project's (JPEGs
    decoded in draft mode at the smallest scale covering the model's input), both at the model's photo
    size and batch, the project from an empty cache with (c)'s decoding processes; the share of products
    given the same tags, and each path's tag micro-F1 against the products' labels (the quality that
    draft mode must keep: tags near their thresholds flip on either side of tiny pixel changes)."""
    big, big_root = large_photos(products, root, a.out, a.large_photos)
    stock_rows, stock_rate = timed(lambda batch: stock_batch(tagger, encoders, batch, big_root, model_id), big, a.batch)
    cache = a.out / "cold-cache-large"
    shutil.rmtree(cache, ignore_errors=True)
    project_rows, ours = streamed(warmed(model_dir, cache, settings, big[:a.batch], big_root), big, big_root, a.batch,
                                  workers)
    return {"large_photo_products": len(big), "large_photo_stock_per_s": round(stock_rate, 2),
            "large_photo_project_per_s": round(ours, 2), "large_photo_ratio": round(ours / stock_rate, 2),
            "large_photo_same_tags": round(agreement(stock_rows, project_rows), 4),
            "large_photo_stock_micro_f1": round(score_rows(big, stock_rows)["tags_micro_f1"], 4),
            "large_photo_project_micro_f1": round(score_rows(big, project_rows)["tags_micro_f1"], 4)}


def int8_text_row(a, model_dir: Path, settings: RunConfig, products: list, root: Path, project_rows: list[dict],
                  workers: int) -> dict:
    """(c) again with the text encoder in int8 (precision `int8`: ONNX Runtime, models/onnx_text.py) into
    an empty cache, and the share of products with the same tags as (c); nothing without onnxruntime or
    on a GPU."""
    if not onnx_available() or torch.cuda.is_available():
        return {}
    int8 = dataclasses.replace(settings, precision="int8")
    try:
        # set up like loading a model, untimed: the export to ONNX, its quantisation and the cosine check
        tagger = warmed(model_dir, a.out / "cold-cache-int8", int8, products[:a.batch], root)
        rows, rate = streamed(tagger, products, root, a.batch, workers)
    except ValueError as e:  # its vectors drift from fp32's: the int8 path refuses this encoder
        return {"int8_text_refused": str(e)}
    return {"project_int8_text_per_s": round(rate, 2),
            "same_tags_int8_text_project": round(agreement(rows, project_rows), 4)}


def agreement(rows_a: list[dict], rows_b: list[dict]) -> float:
    """Share of products whose tags are the same on both paths."""
    return sum(x["tags"] == y["tags"] for x, y in zip(rows_a, rows_b)) / max(len(rows_a), 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="the fashion-myntra folder")
    ap.add_argument("--catalog", type=Path, help="or any catalog (tests)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, help="a trained model folder (default: the preset, random tagger weights)")
    ap.add_argument("--preset", help="default: offline on a CPU, full on a GPU")
    ap.add_argument("--products", type=int, default=512, help="products timed in (b) and (c)")
    ap.add_argument("--naive-products", type=int, default=64, help="products timed in (a)")
    ap.add_argument("--batch", type=int, help="products a batch (default: 64 on a CPU, 256 on a GPU)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where encoders and tagger run (auto: a GPU where there is one)")
    ap.add_argument("--decoding", choices=("auto", *DECODING_MODES), default="auto",
                    help="the project's tag decoding (auto: CUDA graphs on a GPU, dynamic on a CPU)")
    ap.add_argument("--decode-workers", type=int,
                    help="(c): processes decoding the photos ahead (default: what `mmtags tag` starts here)")
    ap.add_argument("--image-size", type=int, help="photo side of the preset's random model (default: the preset's)")
    ap.add_argument("--precision", default="auto", help="encoders: auto (bf16 where the CPU has it), fp32, bf16")
    ap.add_argument("--compile", choices=COMPILE_MODES, default="on",
                    help="the project's encoders through torch.compile (default on: what `auto` does for a catalog "
                         "of 50,000 products or more; compiling is part of the untimed warm-up, project_warmup_s)")
    ap.add_argument("--allow-random-weights", action="store_true", help="tests: tiny random encoders")
    ap.add_argument("--large-photos", type=int, default=512,
                    help="products timed again with their photos upscaled to 1,500-3,000 px (0: skip)")
    a = ap.parse_args(argv)
    if not (a.data or a.catalog):
        ap.error("give --data (fashion-myntra) or --catalog")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no GPU is visible to torch here")
    preset = a.preset or ("full" if device == "cuda" else "offline")
    a.batch = a.batch or (256 if device == "cuda" else 64)
    a.out.mkdir(parents=True, exist_ok=True)
    products, root = load_products(a)
    model_dir = build_model(products, preset, a.out, a.model, a.image_size, a.allow_random_weights)
    settings = RunConfig(precision=a.precision, allow_random_weights=a.allow_random_weights, progress=False,
                         log=lambda s: None, device=device, compile=a.compile,
                         decoding=resolve_decoding(a.decoding, device))
    return run(a, device, preset, products, root, model_dir, settings)


def run(a, device: str, preset: str, products, root: Path, model_dir: Path, settings: RunConfig) -> dict:
    cache = a.out / "cold-cache"
    for folder in (cache, cache.with_name("cold-cache-2"), cache.with_name("cold-cache-int8")):
        shutil.rmtree(folder, ignore_errors=True)
    project = BatchTagger(model_dir, cache, settings, "decoder")
    tagger, encoders = project.model.to(device).eval(), project.encoders
    for enc in (encoders.text, encoders.image):
        enc.to(device)
    stock = stock_encoders(encoders)
    same_size = stock.image is encoders.image

    def through(enc):
        return lambda batch: stock_batch(tagger, enc, batch, root, project.model_id)

    with torch.no_grad():
        for enc in {id(stock): stock, id(encoders): encoders}.values():
            through(enc)(products[:a.batch])  # warm-up at the timed batch shape: first calls allocate
        warmup_s = warm_up(project, products[:a.batch], root, cache.with_name("cold-cache-warm-up"))
        naive_rows, naive = timed(through(stock), products[:a.naive_products], 1)
        stock_rows, stock_rate = timed(through(stock), products, a.batch)
        sized_rows, sized = (stock_rows, stock_rate) if same_size else timed(through(encoders), products, a.batch)
        workers = default_workers(device) if a.decode_workers is None else a.decode_workers
        project_rows, ours = streamed(project, products, root, a.batch, workers)
        other = 0 if workers else 1  # the other choice, timed for comparison, into a second empty cache
        _, other_rate = streamed(warmed(model_dir, cache.with_name("cold-cache-2"), settings, products[:a.batch], root),
                                 products, root, a.batch, other)
        int8 = int8_text_row(a, model_dir, settings, products, root, project_rows, workers)
        if "project_int8_text_per_s" in int8:
            int8["project_int8_text_same_inputs_ratio"] = round(int8["project_int8_text_per_s"] / sized, 2)
        large = (large_photo_row(a, tagger, encoders, products, root, model_dir, settings, project.model_id, workers)
                 if a.large_photos else {})
        flops = flops_per_product(tagger, encoders, products[:8], root, project.model_id)
        stock_flops = flops if same_size else flops_per_product(tagger, stock, products[:8], root, project.model_id)
    rate = matmul_rate(device)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
               "preset": preset, "tagger_weights": str(a.model) if a.model else "random (timing only)",
               "encoder_weights": ("random (timing only)" if encoders.text.random_weights or encoders.image.random_weights
                                   else "pretrained"),
               "decoding": settings.decoding, "compile": settings.compile, "project_warmup_s": round(warmup_s, 2),
               "products": len(products), "naive_products": min(a.naive_products, len(products)), "batch": a.batch,
               "image_size": _input_side(encoders.image), "stock_image_size": _input_side(stock.image),
               "naive_per_s": round(naive, 2), "stock_per_s": round(stock_rate, 2),
               "stock_at_model_size_per_s": round(sized, 2), "project_per_s": round(ours, 2),
               "project_vs_naive": round(ours / naive, 2), "project_vs_stock": round(ours / stock_rate, 2),
               "project_vs_stock_at_model_size": round(ours / sized, 2),
               "project_same_inputs_ratio": round(ours / sized, 2),  # at the same photo size and text length
               "decode_workers": workers, "other_decode_workers": other,
               "project_other_decode_workers_per_s": round(other_rate, 2),
               "gflop_per_product": round(flops / 1e9, 3), "stock_gflop_per_product": round(stock_flops / 1e9, 3),
               "matmul_gflop_s": round(rate / 1e9, 1), "project_peak_fraction": round(ours * flops / rate, 4),
               "peak_memory_mb": _peak_memory_mb(device),
               "precision": encoders.text.precision,
               # tags compared only between paths that see the same photo size
               "same_tags_naive_project": round(agreement(naive_rows, project_rows), 4) if same_size else None,
               "same_tags_stock_project": round(agreement(sized_rows, project_rows), 4), **int8, **large,
               "run": run_facts(a.precision)}
    (a.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (a.out / "results.md").write_text(table(results) + "\n", encoding="utf-8")
    print(table(results))
    return results


def _input_side(encoder) -> int | None:
    """The photo side the encoder's preprocessing produces (None where it cannot tell)."""
    for step in getattr(encoder.transform, "transforms", []):
        if type(step).__name__ == "CenterCrop":
            return int(step.size[0] if isinstance(step.size, (tuple, list)) else step.size)
    return None


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 1e6, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)  # Linux: kilobytes


def table(r: dict) -> str:
    """The throughput of each path against the project's, with the run's facts above."""
    same_naive = "n/a (other photo size)" if r["same_tags_naive_project"] is None else f"{r['same_tags_naive_project']:.2%}"

    def row(path: str, per_s: float, ratio: float) -> dict:
        return {"path": path, "products/s": per_s, "project / it": f"{ratio}x"}
    rows = [row(f"(a) naive: one at a time, stock generate, {r['stock_image_size']} px", r["naive_per_s"],
                r["project_vs_naive"]),
            row(f"(b) stock, batches of {r['batch']}, stock generate, {r['stock_image_size']} px", r["stock_per_s"],
                r["project_vs_stock"])]
    if r["image_size"] != r["stock_image_size"]:
        rows.append(row(f"(b) stock at the model's photo size, {r['image_size']} px", r["stock_at_model_size_per_s"],
                        r["project_vs_stock_at_model_size"]))
    rows.append(row(f"(c) project with {r['other_decode_workers']} photo decoding process(es), {r['image_size']} px",
                    r["project_other_decode_workers_per_s"],
                    round(r["project_per_s"] / r["project_other_decode_workers_per_s"], 2)))
    rows.append(row(f"(c) project (`BatchTagger.tag_stream`, {r['decode_workers']} decoding process(es), cold cache), "
                    f"{r['image_size']} px", r["project_per_s"], 1))
    if "project_int8_text_per_s" in r:
        rows.append(row(f"(c) project, text encoder in int8 (ONNX Runtime; same tags as (c) for "
                        f"{r['same_tags_int8_text_project']:.2%})", r["project_int8_text_per_s"],
                        round(r["project_per_s"] / r["project_int8_text_per_s"], 2)))
    return "\n".join([
        f"device: {r['device']}; preset {r['preset']}; tagger weights {r['tagger_weights']}; "
        f"{r['gflop_per_product']} GFLOP per product ({r['stock_gflop_per_product']} stock); matmul "
        f"{r['matmul_gflop_s']} GFLOP/s; peak memory {r['peak_memory_mb']} MB; encoders in {r['precision']}; "
        f"products with the same tags as (c): (a) {same_naive}, (b) at the model's photo size "
        f"{r['same_tags_stock_project']:.2%}", "",
        markdown_table(rows, {"products/s": 1}),
        "", f"(c) uses {100 * r['project_peak_fraction']:.2f}% of the measured matmul rate.",
        *([f"Large photos (1,500-3,000 px JPEGs, {r['large_photo_products']} products, model's photo size): stock "
           f"{r['large_photo_stock_per_s']}/s, project {r['large_photo_project_per_s']}/s "
           f"({r['large_photo_ratio']}x); same tags {r['large_photo_same_tags']:.2%}; tag micro-F1 stock "
           f"{r['large_photo_stock_micro_f1']}, project {r['large_photo_project_micro_f1']}"] if "large_photo_ratio" in r else [])])


if __name__ == "__main__":
    main()
