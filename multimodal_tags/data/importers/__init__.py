"""Importers: one file per source format, each turning its files into catalog rows.

    source = get_importer("fashion-myntra")(path)
    result = run_import(source, "catalog.jsonl")
"""
from __future__ import annotations

from collections.abc import Callable

from . import flipkart, generic, myntra, product1m
from .base import ImportResult, ImportSource, hash_split, run_import

IMPORTERS: dict[str, Callable[..., ImportSource]] = {
    "fashion-myntra": myntra.read,
    "flipkart-1050": flipkart.read,
    "generic": generic.read,
    "product1m-zh": product1m.read,
}


def get_importer(name: str) -> Callable[..., ImportSource]:
    if name not in IMPORTERS:
        raise KeyError(f"unknown importer {name!r}; available: {', '.join(sorted(IMPORTERS))}")
    return IMPORTERS[name]


__all__ = ["IMPORTERS", "ImportResult", "ImportSource", "get_importer", "hash_split", "run_import"]
