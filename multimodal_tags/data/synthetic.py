"""A small synthetic shop, for the demo and tests: rendered product photos, English and Chinese text.

Each product has a category (drawn as a shape), a colour and a pattern (visible in the photo) and
a material (only in the text). About half the descriptions leave the colour out, so a model needs
the photo as well as the text to get every tag right. The output is a raw export
(`products.jsonl` + `images/`) that goes through the generic importer like a user's own file.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

COLOURS = {  # name -> (RGB, Chinese)
    "red": ((200, 30, 40), "红色"), "blue": ((30, 60, 190), "蓝色"), "green": ((30, 150, 60), "绿色"),
    "black": ((25, 25, 25), "黑色"), "yellow": ((230, 200, 30), "黄色"), "white": ((235, 235, 235), "白色"),
}
PATTERNS = {"solid": "纯色", "striped": "条纹"}
CATEGORIES = {  # name -> (Chinese, materials {en: zh})
    "T-Shirt": ("T恤", {"cotton": "棉质", "polyester": "涤纶"}),
    "Mug": ("马克杯", {"ceramic": "陶瓷", "steel": "不锈钢"}),
    "Watch": ("手表", {"leather": "皮革", "metal": "金属"}),
    "Sneaker": ("运动鞋", {"canvas": "帆布", "leather": "皮革"}),
    "Backpack": ("双肩包", {"nylon": "尼龙", "canvas": "帆布"}),
    "Lamp": ("台灯", {"metal": "金属", "plastic": "塑料"}),
}
# Fixed, not per-run: the demo's numbers must be comparable between runs and machines.
DEFAULT_SEED = 7


def _shape(draw: ImageDraw.ImageDraw, category: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if category == "T-Shirt":
        draw.polygon([(x0 + w * .3, y0), (x0 + w * .7, y0), (x1, y0 + h * .25), (x0 + w * .85, y0 + h * .4),
                      (x0 + w * .78, y1), (x0 + w * .22, y1), (x0 + w * .15, y0 + h * .4), (x0, y0 + h * .25)], fill=fill)
    elif category == "Mug":
        draw.rectangle([x0 + w * .15, y0 + h * .2, x0 + w * .7, y1], fill=fill)
        draw.ellipse([x0 + w * .6, y0 + h * .4, x1, y0 + h * .8], outline=fill, width=max(2, w // 12))
    elif category == "Watch":
        draw.rectangle([x0 + w * .4, y0, x0 + w * .6, y1], fill=(90, 60, 40))
        draw.ellipse([x0 + w * .2, y0 + h * .25, x0 + w * .8, y0 + h * .75], fill=fill, outline=(60, 60, 60), width=2)
    elif category == "Sneaker":
        draw.polygon([(x0, y0 + h * .55), (x0 + w * .45, y0 + h * .35), (x0 + w * .7, y0 + h * .5), (x1, y0 + h * .65),
                      (x1, y0 + h * .85), (x0, y0 + h * .85)], fill=fill)
        draw.rectangle([x0, y0 + h * .85, x1, y1 - h * .05], fill=(240, 240, 240))
    elif category == "Backpack":
        draw.rounded_rectangle([x0 + w * .15, y0 + h * .15, x0 + w * .85, y1], radius=max(3, w // 6), fill=fill)
        draw.arc([x0 + w * .3, y0, x0 + w * .7, y0 + h * .35], 180, 360, fill=fill, width=max(2, w // 14))
    else:  # Lamp
        draw.polygon([(x0 + w * .25, y0 + h * .45), (x0 + w * .75, y0 + h * .45), (x0 + w * .6, y0), (x0 + w * .4, y0)], fill=fill)
        draw.rectangle([x0 + w * .47, y0 + h * .45, x0 + w * .53, y1 - h * .1], fill=(80, 80, 80))
        draw.rectangle([x0 + w * .3, y1 - h * .1, x0 + w * .7, y1], fill=(80, 80, 80))


def render_product(category: str, colour: str, pattern: str, rng: random.Random, size: int = 96) -> Image.Image:
    """A product photo: the category's shape in its colour, on a light background, with jitter."""
    bg = tuple(rng.randint(200, 250) if colour != "white" else rng.randint(120, 170) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    m = rng.randint(6, 16)
    dx, dy = rng.randint(-5, 5), rng.randint(-5, 5)
    rgb = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour][0])
    box = (m + dx, m + dy, size - m + dx, size - m + dy)
    _shape(draw, category, box, rgb)
    if pattern == "striped":  # stripes over the shape only: paint them through a mask of the shape
        mask_rgb = Image.new("RGB", (size, size), (0, 0, 0))
        _shape(ImageDraw.Draw(mask_rgb), category, box, (255, 255, 255))
        mask = mask_rgb.convert("L").point(lambda v: 255 if v else 0)
        stripes = Image.new("RGB", (size, size), bg)
        sd = ImageDraw.Draw(stripes)
        stripe = (250, 250, 250) if colour != "white" else (40, 40, 40)
        for y in range(0, size, 8):
            sd.rectangle([0, y, size, y + 3], fill=stripe)
        im = Image.composite(Image.blend(im, stripes, 0.5), im, mask)
    return im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def _text(category: str, colour: str, pattern: str, material: str, zh: bool, say_colour: bool,
          rng: random.Random) -> tuple[str, str]:
    if zh:
        cat_zh, mats = CATEGORIES[category]
        col = COLOURS[colour][1] if say_colour else ""
        title = f"{col}{PATTERNS[pattern]}{mats[material]}{cat_zh}"
        desc = rng.choice(["做工精致，适合日常使用。", "经典款式，品质保证。", "舒适耐用，送礼佳品。"])
        return title, f"{mats[material]}材质的{cat_zh}。{desc}"
    col = f"{colour} " if say_colour else ""
    title = f"{col.title()}{pattern.title()} {material.title()} {category}".strip()
    desc = rng.choice(["Made for everyday use.", "A classic design that lasts.", "Comfortable and durable.",
                       "Great as a gift."])
    return title, f"A {pattern} {category.lower()} made of {material}. {desc}"


def make_synthetic_export(out: str | Path, n: int = 240, zh_fraction: float = 0.3,
                          seed: int = DEFAULT_SEED) -> Path:
    """Write `out/products.jsonl` and `out/images/*.jpg`; return the JSONL path.

    Rows are a shop-style export: id, title, description, image, category, colour, material,
    pattern, language (import with tag columns colour, material, pattern).
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        category = list(CATEGORIES)[i % len(CATEGORIES)]
        colour, pattern = rng.choice(list(COLOURS)), rng.choice(list(PATTERNS))
        material = rng.choice(list(CATEGORIES[category][1]))
        zh = rng.random() < zh_fraction
        title, desc = _text(category, colour, pattern, material, zh, say_colour=rng.random() < 0.5, rng=rng)
        pid = f"syn-{i:05d}"
        render_product(category, colour, pattern, rng).save(out / "images" / f"{pid}.jpg", quality=90)
        rows.append({"id": pid, "title": title, "description": desc, "image": f"images/{pid}.jpg",
                     "category": category, "colour": colour, "material": material, "pattern": pattern,
                     "language": "zh" if zh else "en"})
    path = out / "products.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


SYNTHETIC_MAPPING = "id=id,title=title,description=description,image=image,category=category,language=language"
SYNTHETIC_TAG_COLUMNS = "colour,material,pattern"
