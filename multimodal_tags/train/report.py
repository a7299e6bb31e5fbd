"""The training run's report: metrics tables and plots (training curves, per-key F1, most confused categories)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

# Fonts that cover Chinese, tried glyph by glyph after DejaVu Sans (category and tag names may be Chinese)
CJK_FONTS = ("WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC",
             "Microsoft YaHei", "PingFang SC", "SimHei")


def use_cjk_fallback() -> list[str]:
    """Add the installed CJK fonts as fallbacks for plot text; returns them (none: Chinese shows as boxes)."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    found = [name for name in CJK_FONTS if name in installed]
    if found:  # named families, not "sans-serif": matplotlib falls back glyph by glyph only across these
        matplotlib.rcParams["font.family"] = ["DejaVu Sans", *found]
    return found


use_cjk_fallback()


def _metrics_table(metrics: dict) -> list[str]:
    lines = ["| split | tags from | category acc | tag micro-P | tag micro-R | tag micro-F1 | tag macro-F1 |",
             "|---|---|---|---|---|---|---|"]
    for split, by_source in metrics.items():
        for source, m in by_source.items():
            lines.append(f"| {split} | {source} | {m['category_accuracy']:.4f} | {m['tags_micro_precision']:.4f} | "
                         f"{m['tags_micro_recall']:.4f} | {m['tags_micro_f1']:.4f} | {m['tags_macro_f1']:.4f} |")
    return lines


def plot_history(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for k in sorted({k for h in history for k in h if k.startswith("train_") and k.endswith("_loss")}):
        a.plot(epochs, [h.get(k) for h in history], label=k[6:-5])
    a.set_xlabel("epoch"), a.set_ylabel("training loss"), a.legend(), a.set_yscale("log")
    for k in ("val_category_accuracy", "val_tags_micro_f1"):
        b.plot(epochs, [h[k] for h in history], label=k[4:])
    b.set_xlabel("epoch"), b.set_ylabel("validation"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_key_f1(f1_by_key: dict[str, float], path: Path, top: int = 25) -> None:
    items = sorted(f1_by_key.items(), key=lambda kv: kv[1])[:top]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("tag F1"), ax.set_xlim(0, 1), ax.set_title(f"F1 per attribute key (lowest {len(items)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusions(gold: list[str], pred: list[str], top: int = 15) -> list[tuple[str, str, int]]:
    pairs = Counter((g, p) for g, p in zip(gold, pred) if g != p and g is not None)
    return [(g, p, n) for (g, p), n in pairs.most_common(top)]


def plot_confusion(gold: list[str], pred: list[str], path: Path, top: int = 12) -> None:
    """Confusion matrix restricted to the categories involved in the most frequent mistakes."""
    involved = []
    for g, p, _ in confusions(gold, pred, top=3 * top):
        for c in (g, p):
            if c not in involved and len(involved) < top:
                involved.append(c)
    if not involved:
        return
    index = {c: i for i, c in enumerate(involved)}
    matrix = [[0] * len(involved) for _ in involved]
    for g, p in zip(gold, pred):
        if g in index and p in index:
            matrix[index[g]][index[p]] += 1
    fig, ax = plt.subplots(figsize=(0.5 * len(involved) + 3, 0.5 * len(involved) + 2))
    ax.imshow([[v ** 0.5 for v in row] for row in matrix], cmap="Blues")  # sqrt: mistakes stay visible
    ax.set_xticks(range(len(involved)), involved, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(involved)), involved, fontsize=8)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("most confused categories (val)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dir: Path, metrics: dict, state: dict, val_products) -> Path:
    """report.md in the run folder: the metrics table, training curves, F1 per key and the most confused
    categories on val (read from val_predictions.jsonl, in the order of `val_products`)."""
    run_dir = Path(run_dir)
    plot_history(state["history"], run_dir / "curves.png")
    split = "test" if "test" in metrics else "val"
    source = "decoder" if "decoder" in metrics[split] else "head"
    plot_key_f1(metrics[split][source]["f1_by_key"], run_dir / "f1_by_key.png")
    rows = [json.loads(l) for l in open(run_dir / "val_predictions.jsonl", encoding="utf-8")]
    gold, pred = [p.category for p in val_products], [r["category"] for r in rows]
    conf = confusions(gold, pred)
    plot_confusion(gold, pred, run_dir / "confusion.png")
    lines = [f"# Run {run_dir.name}", "", f"Best epoch {state['best_epoch']} of {len(state['history'])} run "
             f"(val score {state['best_score']:.4f}).", "", *_metrics_table(metrics), "",
             "![training curves](curves.png)", "", f"![F1 per key, {split}, tags from {source}](f1_by_key.png)", "",
             "## Most confused categories (val)", "", "![confusion](confusion.png)", "",
             "| true | predicted | products |", "|---|---|---|",
             *[f"| {g} | {p} | {n} |" for g, p, n in conf]]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
