"""Batch tagging of a catalog: the tag job (sharded, resumable), Ray Data scale-out, refresh of changed products and the SQLite tag store."""
