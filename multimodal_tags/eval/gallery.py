"""A self-contained HTML gallery of predictions: photo, true and predicted category and tags.

Photos are embedded as small JPEG data URIs, so the file can be mailed or opened anywhere. Correct
predictions are green, mistakes red, missed true tags grey. Filters (category, attribute key, only
mistakes) run in the page; they also read the URL fragment (`#category=Mug&key=colour&mistakes=1`)
so a filtered view can be linked. Every string from the catalog or the predictions is HTML-escaped.
"""
from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from html import escape
from pathlib import Path

from ..data.catalog import image_root_for, iter_catalog
from ..data.images import ImageError, load_image

STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa}
.bar{position:sticky;top:0;background:#fafafa;padding:8px 0;display:flex;gap:12px;align-items:center}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:12px}
.card img{width:100%;height:150px;object-fit:contain;background:#f0f0f0}
.title{font-weight:600;margin:4px 0}
.ok{color:#137333}.bad{color:#b3261e}.missed{color:#888;text-decoration:line-through}
.tag{display:inline-block;margin:1px 3px 1px 0;padding:0 4px;border-radius:3px;background:#f3f3f3}
"""

SCRIPT = """
const cards=[...document.querySelectorAll('.card')];
const cat=document.getElementById('f-category'), key=document.getElementById('f-key'),
      bad=document.getElementById('f-mistakes'), shown=document.getElementById('shown');
function apply(){
  let n=0;
  for(const c of cards){
    const keys=JSON.parse(c.dataset.keys);
    const ok=(!cat.value||c.dataset.category===cat.value)&&(!key.value||keys.includes(key.value))
             &&(!bad.checked||c.dataset.mistake==='1');
    c.style.display=ok?'':'none'; if(ok)n++;
  }
  shown.textContent=n;
}
const params=new URLSearchParams(location.hash.slice(1));
if(params.get('category'))cat.value=params.get('category');
if(params.get('key'))key.value=params.get('key');
if(params.get('mistakes'))bad.checked=true;
for(const el of [cat,key,bad])el.addEventListener('change',apply);
apply();
"""


def _thumbnail(ref: str | None, root: Path, size: int) -> str:
    if not ref:
        return ""
    try:
        im = load_image(ref, root)
    except ImageError:
        return ""
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _tags_html(pred: list[str], gold: set[str]) -> str:
    parts = [f'<span class="tag {"ok" if t in gold else "bad"}">{escape(t)}</span>' for t in pred]
    parts += [f'<span class="tag missed">{escape(t)}</span>' for t in sorted(gold - set(pred))]
    return "".join(parts)


def _prediction_issue(row) -> str | None:
    """Why a predictions line cannot be shown, or None."""
    if not isinstance(row, dict) or "id" not in row:
        return "not a JSON object with an id"
    tags = row.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return f"tags must be a list of strings, got {type(tags).__name__}"
    if not isinstance(row.get("category_score", 0), (int, float)):
        return "category_score must be a number"
    return None


def read_predictions(path: str | Path, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Prediction rows by id; a line that is not a usable row is skipped with a message naming it."""
    preds: dict[str, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                log(f"{path}:{n}: bad JSON ({e.msg}); line skipped")
                continue
            issue = _prediction_issue(row)
            if issue:
                log(f"{path}:{n}: {issue}; line skipped")
                continue
            preds[str(row["id"])] = row
    return preds


def _card(p, row: dict, root: Path, thumb: int) -> tuple[str, list[str]]:
    """One product's card, and the attribute keys it shows."""
    gold, pred_tags = set(p.tags), list(row.get("tags", []))
    cat_ok = p.category is None or row.get("category") == p.category
    tag_mistake = bool(set(pred_tags) ^ gold) if p.tags or pred_tags else False
    card_keys = sorted({t.split(":", 1)[0] for t in gold | set(pred_tags)})
    src = _thumbnail(p.image, root, thumb)
    html = (f'<div class="card" data-category="{escape(p.category or "", quote=True)}" '
            f'data-keys="{escape(json.dumps(card_keys), quote=True)}" '
            f'data-mistake="{int(not cat_ok or tag_mistake)}">'
            + (f'<img src="{src}" alt="{escape(p.title, quote=True)}">' if src else '<div class="noimg">no photo</div>')
            + f'<div class="title">{escape(p.title)}</div>'
            f'<div>true: {escape(p.category or "?")}</div>'
            f'<div class="{"ok" if cat_ok else "bad"}">predicted: {escape(str(row.get("category")))} '
            f'({float(row.get("category_score", 0)):.2f})</div>'
            f'<div>{_tags_html(pred_tags, gold)}</div></div>')
    return html, card_keys


def write_gallery(predictions_path: str | Path, catalog_path: str | Path, out_html: str | Path,
                  limit: int = 500, thumb: int = 160, image_root: str | Path | None = None,
                  log: Callable[[str], None] = print) -> int:
    """Write the gallery for up to `limit` predicted products; returns how many it shows."""
    preds = read_predictions(predictions_path, log)
    root = image_root_for(Path(catalog_path), image_root)
    cards, categories, keys = [], set(), set()
    for p in iter_catalog(catalog_path, image_root):
        if p.id not in preds:
            continue
        card, card_keys = _card(p, preds[p.id], root, thumb)
        cards.append(card)
        categories.add(p.category or "")
        keys.update(card_keys)
        if len(cards) >= limit:
            break
    _write_page(out_html, cards, categories, keys)
    return len(cards)


def _write_page(out_html: str | Path, cards: list[str], categories: set[str], keys: set[str]) -> None:
    def options(values) -> str:
        return "".join(f'<option value="{escape(v, quote=True)}">{escape(v)}</option>' for v in sorted(values) if v)

    html = (f'<!doctype html><html><head><meta charset="utf-8"><title>Tag gallery</title><style>{STYLE}</style>'
            f'</head><body><h1>Tag gallery</h1><div class="bar">'
            f'<label>category <select id="f-category"><option value="">all</option>{options(categories)}</select></label>'
            f'<label>attribute <select id="f-key"><option value="">all</option>{options(keys)}</select></label>'
            f'<label><input type="checkbox" id="f-mistakes"> only mistakes</label>'
            f'<span><span id="shown">{len(cards)}</span> of {len(cards)} shown</span></div>'
            f'<div class="grid">{"".join(cards)}</div><script>{SCRIPT}</script></body></html>')
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
