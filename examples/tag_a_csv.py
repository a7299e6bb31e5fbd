"""Tag a CSV of products: import it, train a tagger, tag every row. Read it top to bottom.

    python examples/tag_a_csv.py                   # a small synthetic shop, made here as a CSV
    python examples/tag_a_csv.py shop.csv OUT      # your own CSV (columns below), into OUT

The CSV needs `id`, `title`, `description`, `image` (a photo path relative to the CSV), `category`, and
one column per tag key (here: colour, material, pattern). The `tiny` preset trains in seconds on random
encoders, to show the steps; for real tags use `get_preset("offline")` and drop `allow_random_weights`.
"""
import csv
import json
import sys
from pathlib import Path

from multimodal_tags import (BatchTagger, RunConfig, TrainConfig, get_importer, get_preset, read_catalog,
                             run_import, train_tagger)
from multimodal_tags.data.synthetic import make_synthetic_export


def synthetic_csv(folder: Path) -> Path:
    """A CSV export of the synthetic demo shop (80 products with rendered photos)."""
    rows = [json.loads(line) for line in make_synthetic_export(folder, n=80).read_text().splitlines()]
    path = folder / "products.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: list[str]) -> list[dict]:
    out = Path(argv[1] if len(argv) > 1 else "runs/tag-a-csv")
    source = Path(argv[0]) if argv and argv[0] else synthetic_csv(out / "shop")

    # 1. Import: every bad row is reported by file, row and field; the good ones go on.
    importer = get_importer("generic")
    result = run_import(importer(source, tag_columns="colour,material,pattern"), out / "catalog.jsonl")
    print(result.report.summary())

    # 2. Train: the run folder gets the model, its metrics and a report.
    settings = RunConfig(cache_dir=out / "cache", allow_random_weights=True)  # tiny: random encoders
    trained = train_tagger(out / "catalog.jsonl", out / "run", get_preset("tiny"),
                           TrainConfig(epochs=3, batch_size=16), settings)
    print("test metrics:", {k: round(v, 3) for k, v in trained["metrics"]["test"]["head"].items()
                            if k in ("category_accuracy", "tags_micro_f1")})

    # 3. Tag: one row per product, with category, tags, scores and where each tag came from.
    catalog = read_catalog(out / "catalog.jsonl")
    tagger = BatchTagger(out / "run" / "model", out / "cache", settings)
    rows = tagger.tag(catalog.products, catalog.image_root)
    for row in rows[:3]:
        print(row["id"], row["category"], {t: row["tag_scores"][t] for t in row["tags"]})
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
