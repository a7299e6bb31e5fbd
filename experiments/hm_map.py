"""H&M's articles for the new-shop experiments (experiments/new_shop.py, new_shop_colour_bound.py): their
rows, the fixed pool/test split both use, and their labels in the Myntra model's vocabulary.

H&M's `product_type_name` maps to a Myntra article type (the model's category) and `colour_group_name`
to a Myntra base colour (the model's `colour:` tag); `index_group_name` gives the gender where it is
unambiguous. Only confident pairs are mapped: a type or colour with no clear Myntra counterpart (Bodysuit,
Other accessories, "Divided", Baby/Children, ...) is left out of the scores and counted, never guessed.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
from pathlib import Path

#: H&M product_type_name -> Myntra articleType
TYPES = {
    "Trousers": "Trousers", "Sweater": "Sweaters", "T-shirt": "Tshirts", "Dress": "Dresses", "Blouse": "Tops",
    "Top": "Tops", "Vest top": "Tops", "Bra": "Bra", "Underwear bottom": "Briefs", "Skirt": "Skirts",
    "Shirt": "Shirts", "Leggings/Tights": "Leggings", "Jacket": "Jackets", "Coat": "Jackets",
    "Hoodie": "Sweatshirts", "Cardigan": "Sweaters", "Socks": "Socks", "Shorts": "Shorts", "Bag": "Handbags",
    "Swimwear bottom": "Swimwear", "Bikini top": "Swimwear", "Swimsuit": "Swimwear", "Blazer": "Blazers",
    "Scarf": "Scarves", "Underwear Tights": "Tights", "Earring": "Earrings", "Sneakers": "Casual Shoes",
    "Belt": "Belts", "Necklace": "Necklace and Chains", "Pyjama set": "Night suits",
    "Jumpsuit/Playsuit": "Jumpsuit", "Hat/beanie": "Caps", "Cap/peaked": "Caps", "Pyjama bottom": "Lounge Pants",
    "Pumps": "Heels", "Sandals": "Sandals", "Ballerinas": "Flats", "Flat shoe": "Flats", "Wallet": "Wallets",
    "Sunglasses": "Sunglasses", "Ring": "Ring", "Bracelet": "Bracelet", "Garment Set": "Clothing Set",
}

#: H&M colour_group_name -> Myntra baseColour
COLOURS = {
    "Black": "Black", "White": "White", "Off White": "Off White", "Grey": "Grey", "Light Grey": "Grey",
    "Dark Grey": "Grey", "Dark Blue": "Navy Blue", "Blue": "Blue", "Light Blue": "Blue", "Red": "Red",
    "Dark Red": "Maroon", "Pink": "Pink", "Light Pink": "Pink", "Dark Pink": "Pink", "Beige": "Beige",
    "Light Beige": "Beige", "Dark Beige": "Beige", "Greenish Khaki": "Olive", "Green": "Green",
    "Dark Green": "Green", "Yellow": "Yellow", "Orange": "Orange", "Dark Orange": "Orange",
    "Light Orange": "Peach", "Gold": "Gold", "Silver": "Silver", "Purple": "Purple", "Dark Purple": "Purple",
    "Light Purple": "Lavender", "Brown": "Brown", "Dark Brown": "Brown", "Yellowish Brown": "Brown",
    "Dark Turquoise": "Teal", "Turquoise": "Turquoise Blue", "Light Turquoise": "Turquoise Blue",
}

#: H&M index_group_name -> Myntra gender
GENDERS = {"Ladieswear": "Women", "Menswear": "Men"}

#: the tag keys whose truth the map gives (new_shop.py's reviewer judges these, and the category)
KEYS = ("colour", "gender")


def articles(data: Path) -> list[dict]:
    """The rows of H&M's articles.csv.gz in the hm-interactions folder `data`."""
    with gzip.open(data / "articles.csv.gz", "rt", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def half(article: dict) -> str:
    """The experiments' fixed 50/50 split by a hash of the article id: "pool" (reviewed) or "test"."""
    return "pool" if int(hashlib.sha256(article["article_id"].encode()).hexdigest(), 16) % 2 == 0 else "test"


def truth(article: dict) -> tuple[str | None, dict[str, str]]:
    """(Myntra category or None, {key: Myntra value}) of one H&M article row."""
    values = {"colour": COLOURS.get(article.get("colour_group_name", "")),
              "gender": GENDERS.get(article.get("index_group_name", ""))}
    return TYPES.get(article.get("product_type_name", "")), {k: v for k, v in values.items() if v}
