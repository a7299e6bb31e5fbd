"""Every generated results table of README.md and docs/, made from the committed results files.

    python -m experiments.report           # rewrite the tables from docs/results/*.json
    python -m experiments.report --check   # exit 1, naming each file, where a table differs

A generated table sits between `<!-- table: NAME -->` and `<!-- /table -->` in a markdown file. NAME
is either a key of TABLES, which says which results files it reads (copies of experiments'
OUT/results.json in docs/results/) and how they become rows, or the name of a recorded table,
docs/results/NAME.json with `columns` and `rows` (the rows an experiment printed, with the document
and commit that first recorded them). A table may appear in several documents; all come from one file.
Edit the results file or the renderer, never the table: tests/test_report.py fails when a committed
table differs from what this script makes.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from experiments.common import REPO, markdown_table
from experiments.implicit_benchmark import implicit_table
from experiments.llm_decoder import heldout_table as llm_heldout_table
from experiments.llm_decoder import table as llm_decoder_table
from experiments.new_shop import table as new_shop_table
from experiments.new_shop_colour_bound import table as colour_bound_table

RESULTS = Path("docs") / "results"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _facts(r: dict) -> str:
    run = r.get("run") or {}
    where = ", ".join(str(run[k]) for k in ("machine", "precision") if run.get(k))
    cores = f"{run['cores']} cores" if run.get("cores") else ""
    return "; ".join(x for x in (", ".join(x for x in (where, cores) if x),
                                 f"commit {run['commit']}" if run.get("commit") else "", run.get("date", "")) if x)


def benchmark_table(r: dict) -> str:
    """Every row of experiments/myntra_benchmark.py's results.json."""
    return (markdown_table(r["rows"], {"train min": 1}) +
            f"\n\nSelected: {r['best']}. {r['minutes']:.1f} min from an empty cache ({_facts(r)}).")


def headline_table(bench: dict, implicit: dict) -> str:
    """README's table: the selected model's GPT-2 tags on test, with a modality hidden and with label
    words removed from the test texts."""
    rows = {row["model"]: row for row in bench["rows"] if row["tags from"] == "GPT-2"}
    best = bench["best"]

    def bench_row(name: str, label: str) -> dict:
        row = rows[name]
        return {"test split": label, "category acc": row["test acc"], "tag micro-F1": row["test tag F1"],
                "tag macro-F1": row["test macro F1"]}

    def masked_row(variant: str, label: str) -> dict:
        m = implicit[variant]
        return {"test split": label, "category acc": m["category_acc"], "tag micro-F1": m["micro_f1"],
                "tag macro-F1": m["macro_f1"]}

    table = [bench_row(best, f"{best}: texts and photos as they are"),
             bench_row(best.replace("fused", "text only") + " (photo hidden)", "photo hidden"),
             bench_row(best.replace("fused", "image only") + " (text hidden)", "text hidden"),
             masked_row("masked_colour", "colour words removed from the texts"),
             masked_row("masked_category", "category words removed"),
             masked_row("masked_all", "colour, category, gender and own tag words removed")]
    return (markdown_table(table) + f"\n\n{bench['minutes']:.0f} minutes from an empty cache ({_facts(bench)}).")


def recorded_table(r: dict) -> str:
    """A recorded table: its `columns` and `rows` (lists of cells, strings as written, numbers as JSON)."""
    def cell(v) -> str:
        return "-" if v is None else str(v)
    out = ["| " + " | ".join(r["columns"]) + " |", "|" + "---|" * len(r["columns"])]
    return "\n".join(out + ["| " + " | ".join(cell(v) for v in row) + " |" for row in r["rows"]])


def _load(name: str, root: Path) -> dict:
    return json.loads((root / RESULTS / name).read_text(encoding="utf-8"))


def make_table(name: str, root: Path, where: str = "") -> str:
    """The table NAME made from the results files under `root`."""
    if name in TABLES:
        return TABLES[name](root)
    path = root / RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{where}: unknown table {name!r}: neither a key of experiments.report.TABLES "
                         f"nor a results file {RESULTS / (name + '.json')}")
    return recorded_table(_load(path.name, root))


#: table name -> how to make it from the results files under `root`
TABLES: dict[str, Callable[[Path], str]] = {
    "myntra-benchmark": lambda root: benchmark_table(_load("myntra-bench.json", root)),
    "headline": lambda root: headline_table(_load("myntra-bench.json", root), _load("implicit-myntra.json", root)),
    "implicit": lambda root: implicit_table(_load("implicit-myntra.json", root)),
    "new-shop": lambda root: new_shop_table(_load("new-shop-hm.json", root)),
    "new-shop-colour-bound": lambda root: colour_bound_table(_load("new-shop-colour-bound.json", root)),
    "llm-decoder": lambda root: llm_decoder_table(_load("llm-decoder-myntra.json", root)),
    "llm-heldout": lambda root: llm_heldout_table(_load("llm-decoder-myntra.json", root)),
}


def render(text: str, root: Path, where: str = "") -> str:
    """`text` with every generated table made again from the results files under `root`."""
    def fill(m: re.Match) -> str:
        return m.group(1) + make_table(m["name"], root, where).strip() + "\n" + m.group(4)
    return BLOCK.sub(fill, text)


def documents(root: Path) -> list[Path]:
    """README.md and every markdown file under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def stale(root: Path = REPO) -> list[str]:
    """The documents whose generated tables differ from what the results files make."""
    return [str(p.relative_to(root)) for p in documents(root)
            if (text := p.read_text(encoding="utf-8")) != render(text, root, str(p))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    ap.add_argument("--root", type=Path, default=REPO, help="the repository (default: this one)")
    a = ap.parse_args(argv)
    if a.check:
        bad = stale(a.root)
        for name in bad:
            print(f"{name}: a generated table differs from its results file (run python -m experiments.report)")
        return 1 if bad else 0
    for path in documents(a.root):
        text = path.read_text(encoding="utf-8")
        if (new := render(text, a.root, str(path))) != text:
            path.write_text(new, encoding="utf-8")
            print(f"{path.relative_to(a.root)}: tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
