"""Tag decoding at fixed shapes: a pre-allocated KV cache, and CUDA graphs on a GPU.

`TagDecoder.generate`'s default ("dynamic") suits a CPU: finished rows leave the batch and its cache, so
later steps compute only the rows still writing. On a GPU the cost of a step is mostly launching its
kernels, not the rows, and shapes that change every step rule out CUDA graphs. So the "static" and
"graphs" modes keep every row to the end (a finished row writes EOS), write the KV cache into tensors
allocated once per batch size (transformers' StaticCache, reset between batches), and with "graphs"
capture one GPT-2 step as CUDA graphs (torch.compile's "reduce-overhead" mode) and replay it.

Every mode gives the same tags in float32 (tests). "graphs" runs as "static" where CUDA graphs do not
apply (a CPU), and falls back to it, once and with a log line, if compiling fails.
"""
from __future__ import annotations

import logging

import torch
from transformers import StaticCache

from ..config import DECODING_MODES

SYNC_EVERY = 4  # steps between checks that every row has finished (each check waits for the device)

log = logging.getLogger(__name__)


def resolve_decoding(mode: str, device: str) -> str:
    """`mode`, with "auto" made concrete: "graphs" on a GPU, "dynamic" elsewhere."""
    if mode == "auto":
        return "graphs" if device == "cuda" else "dynamic"
    if mode not in DECODING_MODES:
        raise ValueError(f"decoding must be auto or one of {', '.join(DECODING_MODES)}, not {mode!r}")
    return mode


class StaticSteps:
    """A decoder's GPT-2 steps at fixed shapes: one StaticCache per batch size, reused batch after batch,
    and the one-token step compiled for CUDA graphs when `graphs` and the model is on a GPU."""

    def __init__(self, gpt, max_len: int, graphs: bool):
        self.gpt, self.max_len = gpt, max_len
        self.graphs = graphs and next(gpt.parameters()).is_cuda
        self.caches: dict[int, StaticCache] = {}
        self._step = self._compile() if self.graphs else self._eager_step

    def cache(self, batch: int) -> StaticCache:
        """The cache for this batch size, emptied."""
        if batch not in self.caches:
            self.caches[batch] = StaticCache(config=self.gpt.config, max_cache_len=self.max_len)
        else:
            self.caches[batch].reset()
        return self.caches[batch]

    def prefill(self, embeds: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """Logits [b, vocab] after the prompt's embeddings (written into `cache`)."""
        positions = torch.arange(embeds.shape[1], device=embeds.device)[None]
        return self.gpt(inputs_embeds=embeds, cache=cache, use_cache=True, position_ids=positions).logits[:, -1]

    def step(self, ids: torch.Tensor, position: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """Logits [b, vocab] after one more token per row (`ids` [b, 1], at `position` [1, 1])."""
        if self.graphs:
            try:
                return self._step(ids, position, cache).clone()  # a graph's output is overwritten by its next replay
            except Exception as e:  # noqa: BLE001 - any compile failure: the eager step is the same arithmetic
                log.warning("CUDA graphs unavailable for the tag decoder (%s); decoding with a static cache", e)
                self.graphs, self._step = False, self._eager_step
        return self._step(ids, position, cache)

    def _eager_step(self, ids: torch.Tensor, position: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        return self.gpt(input_ids=ids, cache=cache, use_cache=True, position_ids=position).logits[:, -1]

    def _compile(self):
        return torch.compile(self._eager_step, mode="reduce-overhead", fullgraph=False, dynamic=False)


@torch.no_grad()
def generate_static(decoder, fused: torch.Tensor, max_steps: int, tag_bias: torch.Tensor | None,
                    steps: StaticSteps) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy constrained decoding of `decoder` (a TagDecoder) with every row kept to the end: the token
    ids and their probabilities per row, as `TagDecoder.generate` computes them."""
    tok = decoder.tokenizer
    b, dev = fused.shape[0], fused.device
    size = max(steps.caches, default=b)
    if steps.graphs and b < size:  # a smaller (last) batch replays the graphs captured for the larger one
        fused = torch.cat([fused, fused.new_zeros(size - b, fused.shape[1])])
        if tag_bias is not None:
            tag_bias = torch.cat([tag_bias, tag_bias.new_zeros(size - b, tag_bias.shape[1])])
        ids, probs = generate_static(decoder, fused, max_steps, tag_bias, steps)
        return ids[:b], probs[:b]
    bos = decoder.gpt.transformer.wte(torch.full((b, 1), tok.BOS, device=dev))
    embeds = torch.cat([decoder.mapper(fused), bos], dim=1)
    cache = steps.cache(b)
    bias = decoder._vocab_bias(tag_bias)
    bias = torch.zeros((1, 1), device=dev) if bias is None else bias
    logits = steps.prefill(embeds, cache).float() + bias
    used = torch.zeros(b, logits.shape[-1], dtype=torch.bool, device=dev)
    used_keys = torch.zeros(b, (len(tok.keys) + 1) if decoder.closed else 1, dtype=torch.bool, device=dev)
    ids = torch.full((b, max_steps), tok.EOS, dtype=torch.long, device=dev)
    probs = torch.zeros(b, max_steps, device=dev)
    finished = torch.zeros(b, dtype=torch.bool, device=dev)
    rows = torch.arange(b, device=dev)
    position = torch.full((1, 1), embeds.shape[1], dtype=torch.long, device=dev)
    for step in range(max_steps):
        p = torch.softmax(decoder._constrain(logits, used, used_keys), dim=-1)
        nxt = p.argmax(-1).masked_fill(finished, tok.EOS)
        ids[:, step], probs[:, step] = nxt, p.gather(1, nxt[:, None])[:, 0]
        finished |= nxt == tok.EOS
        if step == max_steps - 1 or (step % SYNC_EVERY == SYNC_EVERY - 1 and bool(finished.all())):
            break
        used[rows, nxt] |= ~finished  # a finished row's EOS marks nothing
        if decoder.closed:
            k = decoder.key_of_token[nxt]
            used_keys[rows, k.clamp(min=0)] |= (k >= 0) & ~finished
        logits = steps.step(nxt[:, None], position, cache).float() + bias
        position += 1
    return ids.tolist(), probs.tolist()
