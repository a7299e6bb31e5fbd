"""Splitting a tagging job between processes, and merging their outputs into one process's output.

Under `accelerate launch --num_processes N mmtags tag ...`, process r tags the valid products k with
k % N == r into its own shard file `OUT.shard-r-of-N`, resumable like any output. When every shard is
done, the main process interleaves them line by line (product k is line k // N of shard k % N) into
OUT, written atomically: the same bytes one process writes. The shards are then removed.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..files import replacing

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's part of a job: `rank` of `world` processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def select(self, items: Iterable[T]) -> Iterator[T]:
        """Every `world`-th item, starting at `rank`."""
        return (x for k, x in enumerate(items) if k % self.world == self.rank)

    def path(self, out: Path) -> Path:
        return out.with_name(f"{out.name}.shard-{self.rank}-of-{self.world}")


def current_shard() -> Shard:
    """This process's shard under `accelerate launch` (one process: the whole job)."""
    from accelerate import PartialState

    state = PartialState()
    return Shard(state.process_index, state.num_processes)


def gather_counts(counts: list[int]) -> list[list[int]]:
    """Every process's `counts`, in rank order (all processes call this)."""
    from accelerate.utils import gather_object

    return _chunks(gather_object(list(counts)), len(counts))


def _chunks(flat: list[int], size: int) -> list[list[int]]:
    return [flat[i:i + size] for i in range(0, len(flat), size)]


def wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def shard_paths(out: Path, world: int) -> list[Path]:
    return [Shard(r, world).path(out) for r in range(world)]


def merge_shards(out: Path, world: int) -> int:
    """Interleave the shards of `out` into `out` (atomically), remove them; returns the line count."""
    paths, lines = shard_paths(out, world), 0
    with ExitStack() as stack, replacing(out) as merged:
        files = [stack.enter_context(open(p, "rb")) for p in paths]
        for line in _round_robin(files):
            merged.write(line)
            lines += 1
        if any(f.readline() for f in files):
            raise ValueError(f"the shards of {out} do not interleave (a shard has lines past the end); "
                             f"were they written by runs with different process counts?")
    for p in paths:
        p.unlink()
    return lines


def _round_robin(files) -> Iterator[bytes]:
    """Line 0 of every file, then line 1 of every file, ... until the first file that has no more (each
    shard holds every N-th product, so only the last round can be short)."""
    while True:
        for f in files:
            line = f.readline()
            if not line:
                return
            yield line
