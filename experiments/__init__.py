"""Experiments: scripts that measure the project on real data and write OUT/results.json.

Run one as `python experiments/NAME.py ...` or `python -m experiments.NAME ...` from the repository root
(the editable install makes `experiments` importable, so neither form edits the import path).
Shared pieces live in `experiments/common.py` (paths, catalogs, run folders, logs, tables, settings) and
`experiments/runs.py` (training benchmark runs, in parallel worker processes).
"""
