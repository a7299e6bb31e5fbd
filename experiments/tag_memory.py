"""Peak memory of `mmtags tag` against catalog length: it must stay flat (streaming, bounded memory).

    python experiments/tag_memory.py --model runs/myntra-bench/model --catalog runs/myntra-bench/catalog.jsonl \\
        --n 20000 --factor 10 --out runs/tag-memory

Builds catalogs of N and factor*N products by repeating the given catalog's rows under new ids (so
their features are already cached and the measurement is the tagging job itself), runs
`mmtags tag` on each under `/usr/bin/time -v`, and prints products/s and peak RSS, with the ratio of
the long catalog's peak to the short one's.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from multimodal_tags.features import default_cache_dir


def _make(src: Path, n: int, out: Path) -> Path:
    rows = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) >= n:
                break
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            r = dict(rows[i % len(rows)], id=f"{rows[i % len(rows)]['id']}-copy{i // len(rows)}")
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    meta = src.with_name(src.name + ".meta.json")
    if meta.exists():
        m = json.loads(meta.read_text())
        m["image_root"] = str((src.parent / m.get("image_root", ".")).resolve())
        out.with_name(out.name + ".meta.json").write_text(json.dumps(m))
    return out


def _run(model: str, catalog: Path, out: Path, cache: str, batch: int) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "multimodal_tags.cli", "tag", "--model", model,
           "--catalog", str(catalog), "--out", str(out), "--cache", cache, "--quiet", "--batch-size", str(batch)]
    out.unlink(missing_ok=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    rate = re.search(r"\(([\d.]+) products/s\)", res.stdout)
    return {"products": sum(1 for _ in open(out, encoding="utf-8")), "peak_mb": peak / 1024,
            "products_per_s": float(rate.group(1)) if rate else None, "log": res.stdout.strip()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--cache", help="feature cache (default: beside the catalog)")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(a.catalog)
    cache = a.cache or str(default_cache_dir(src))
    results = {}
    for n in (a.n, a.n * a.factor):
        catalog = _make(src, n, out / f"catalog-{n}.jsonl")
        results[n] = _run(a.model, catalog, out / f"tagged-{n}.jsonl", cache, a.batch_size)
        print(f"{n:>8} products: {results[n]['products_per_s']} products/s, peak RSS {results[n]['peak_mb']:.0f} MB")
    small, big = results[a.n], results[a.n * a.factor]
    print(f"peak RSS ratio ({a.factor}x longer catalog): {big['peak_mb'] / small['peak_mb']:.2f}")
    return results


if __name__ == "__main__":
    main()
