"""The tag decoder: fused vector -> k prefix embeddings -> GPT-2 -> tags (as in ClipCap).

Training is teacher-forced: [prefix_1..prefix_k, BOS, t_1..t_n] predicts [t_1..t_n, EOS]. Generation is
batched and incremental: the prefix is run once, then one token per step through GPT-2's KV cache.
Closed-vocabulary decoding is constrained: no tag twice, at most one value of a single-valued key,
and it stops at EOS; each generated tag comes with its probability.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from ..config import DECODING_MODES, DecoderConfig
from .encoder_base import WeightsUnavailable
from .static_decode import StaticSteps, generate_static
from .tag_tokenizer import TagTokenizer, tag_key

# Open vocabulary: BPE tokens a tag may take, at most (positions and generation steps are sized by it).
OPEN_TOKENS_PER_TAG = 8

# What one more GPT-2 call costs, in padded positions: a new length group must save more than this.
GROUP_CALL_POSITIONS = 256


def length_groups(lengths: torch.Tensor, prefix_length: int = 0,
                  call_cost: int = GROUP_CALL_POSITIONS) -> list[torch.Tensor]:
    """Row indices split into groups of similar sequence length, chosen to minimise the positions GPT-2
    computes: sum over groups of rows x (prefix + longest row), plus `call_cost` per group. An exact
    dynamic programme over the distinct lengths (a few dozen), so it costs nothing beside a step."""
    values, counts = torch.unique(lengths.cpu(), return_counts=True)  # sorted ascending
    values, counts = values.tolist(), counts.tolist()
    n = len(values)
    rows_upto = [0] + list(itertools.accumulate(counts))
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: the cheapest grouping of the j shortest distinct lengths
        for i in range(j):  # the last group holds distinct lengths i .. j-1
            cost = best[i] + (rows_upto[j] - rows_upto[i]) * (prefix_length + values[j - 1]) + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], n
    while j > 0:
        bounds.append((values[cut[j]], values[j - 1]))
        j = cut[j]
    return [torch.nonzero((lengths >= lo) & (lengths <= hi)).squeeze(1) for lo, hi in reversed(bounds)]


class MLPMapper(nn.Module):
    def __init__(self, dim: int, k: int, width: int):
        super().__init__()
        self.k, self.width = k, width
        hidden = (dim + k * width) // 2
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, k * width))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused).view(fused.shape[0], self.k, self.width)


class TransformerMapper(nn.Module):
    """k learned queries attend, with the projected fused vector, through a small transformer."""

    def __init__(self, dim: int, k: int, width: int, layers: int = 2, heads: int = 4):
        super().__init__()
        self.k = k
        self.inp = nn.Linear(dim, width)
        self.queries = nn.Parameter(torch.randn(k, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.inp(fused).unsqueeze(1), self.queries.expand(fused.shape[0], -1, -1)], dim=1)
        return self.encoder(x)[:, 1:]


def build_gpt2(cfg: DecoderConfig, vocab_size: int) -> GPT2LMHeadModel:
    """Pretrained GPT-2 (hub name or folder; its vocabulary resized when the tag vocabulary differs), or a
    GPT-2 trained from scratch. A named pretrained model that cannot load fails loudly."""
    if cfg.gpt2 == "scratch":
        conf = GPT2Config(vocab_size=vocab_size, n_positions=cfg.prefix_length + cfg.max_tags * OPEN_TOKENS_PER_TAG + 4,
                          n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout,
                          embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, bos_token_id=1, eos_token_id=2,
                          # GPT-2's tanh GELU as one fused kernel: gelu_new (the default) spells it in
                          # six elementwise ops, and a training step measured 12% slower on a CPU
                          activation_function="gelu_pytorch_tanh")
        return GPT2LMHeadModel(conf)
    try:
        model = GPT2LMHeadModel.from_pretrained(cfg.gpt2)
    except (OSError, ValueError) as e:
        raise WeightsUnavailable(
            f"GPT-2 {cfg.gpt2!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"download it on a machine with internet and pass its folder, or use gpt2='scratch'.") from None
    if model.config.vocab_size != vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


class TagDecoder(nn.Module):
    def __init__(self, fused_dim: int, tokenizer, cfg: DecoderConfig):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.gpt = build_gpt2(cfg, len(tokenizer))
        width = self.gpt.config.n_embd
        self.mapper = (MLPMapper(fused_dim, cfg.prefix_length, width) if cfg.mapper == "mlp"
                       else TransformerMapper(fused_dim, cfg.prefix_length, width))
        self.closed = isinstance(tokenizer, TagTokenizer)
        # how `generate` runs (models/static_decode.py): "dynamic" (finished rows leave the batch; a CPU's
        # choice), "static" (fixed shapes, a pre-allocated KV cache) or "graphs" (static + CUDA graphs)
        self.decoding = "dynamic"
        self._static: StaticSteps | None = None
        if self.closed:
            self.register_buffer("key_of_token", torch.tensor(tokenizer.key_ids()), persistent=False)
            single = [k in tokenizer.single_valued for k in tokenizer.keys]
            self.register_buffer("key_single", torch.tensor(single + [False], dtype=torch.bool), persistent=False)

    def no_decay_parameters(self) -> set[str]:
        """GPT-2's position embeddings: a table of vectors, which weight decay would only shrink."""
        return {f"gpt.transformer.wpe.{n}" for n, _ in self.gpt.transformer.wpe.named_parameters()}

    def _vocab_bias(self, tag_bias: torch.Tensor | None) -> torch.Tensor | None:
        """Per-tag scores [b, n_tags] (the word scores) as a bias on the tag tokens' logits [b, vocab]."""
        if tag_bias is None or not self.closed:  # open vocabulary: a tag is several BPE tokens, no bias
            return None
        return F.pad(tag_bias.float(), (len(self.tokenizer.SPECIALS), 0))

    def forward(self, fused: torch.Tensor, target_ids: torch.Tensor,
                tag_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced loss. target_ids: [batch, L] = BOS t_1 .. t_n EOS PAD.. (PAD-padded); tag_bias:
        optional [batch, n_tags] scores added to every step's tag-token logits.

        Rows of similar length go through GPT-2 together (`length_groups`), each group padded only to its
        own longest: the same loss as one padded batch (attention is causal and PAD positions carry no
        loss), at about half the positions on a catalog whose products have 4 to 25 tags."""
        prefix = self.mapper(fused)
        lengths = (target_ids != self.tokenizer.PAD).sum(1)
        loss_sum, n_labels = fused.new_zeros((), dtype=torch.float32), 0
        for rows in length_groups(lengths, prefix.shape[1]):
            targets = target_ids[rows, :int(lengths[rows].max())]
            labels = targets[:, 1:].masked_fill(targets[:, 1:] == self.tokenizer.PAD, -100)
            logits = self._teacher_forced_logits(prefix[rows], targets[:, :-1],
                                                 None if tag_bias is None else tag_bias[rows])
            loss_sum = loss_sum + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                  ignore_index=-100, reduction="sum")
            n_labels += int((labels != -100).sum())
        return loss_sum / max(n_labels, 1)

    def _teacher_forced_logits(self, prefix: torch.Tensor, inputs: torch.Tensor,
                               tag_bias: torch.Tensor | None) -> torch.Tensor:
        """Logits [b, L, vocab] at the token positions of [prefix, inputs] (inputs PAD-padded)."""
        embeds = torch.cat([prefix, self.gpt.transformer.wte(inputs)], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device),
                          (inputs != self.tokenizer.PAD).long()], dim=1)
        logits = self.gpt(inputs_embeds=embeds, attention_mask=mask).logits[:, prefix.shape[1]:].float()
        bias = self._vocab_bias(tag_bias)
        return logits if bias is None else logits + bias[:, None]

    def _constrain(self, logits: torch.Tensor, used: torch.Tensor, used_keys: torch.Tensor) -> torch.Tensor:
        """Forbid specials other than EOS, tags already emitted, and second values of single-valued keys."""
        tok = self.tokenizer
        logits[:, tok.PAD] = float("-inf")
        logits[:, tok.BOS] = float("-inf")
        if self.closed:
            logits = logits.masked_fill(used, float("-inf"))
            key = self.key_of_token.clamp(min=0)
            blocked = used_keys[:, key] & self.key_single[key] & (self.key_of_token >= 0)
            logits = logits.masked_fill(blocked, float("-inf"))
        return logits

    def max_steps(self) -> int:
        """Generation steps at most: one per tag, or OPEN_TOKENS_PER_TAG per tag for BPE tags."""
        return self.cfg.max_tags if self.closed else self.cfg.max_tags * OPEN_TOKENS_PER_TAG

    def set_decoding(self, mode: str) -> None:
        """How `generate` runs: "dynamic", "static" or "graphs" (models/static_decode.py)."""
        if mode not in DECODING_MODES:
            raise ValueError(f"decoding must be one of {', '.join(DECODING_MODES)}, not {mode!r}")
        self.decoding, self._static = mode, None

    def _static_steps(self, max_steps: int) -> StaticSteps:
        max_len = self.cfg.prefix_length + 1 + max_steps
        if self._static is None or self._static.max_len != max_len:
            self._static = StaticSteps(self.gpt, max_len, graphs=self.decoding == "graphs")
        return self._static

    @torch.no_grad()
    def generate(self, fused: torch.Tensor, max_steps: int | None = None, tag_bias: torch.Tensor | None = None,
                 early_exit: bool = True) -> list[list[tuple[str, float]]]:
        """Greedy constrained decoding for a batch; returns, per product, (tag, probability) in order.
        tag_bias: the per-tag scores the decoder was trained with, if any. With `early_exit`, a row that
        has emitted EOS leaves the batch (and its KV cache): later steps compute only the rows still
        writing (the same tags; experiments/decode_speed.py times both). `self.decoding` other than
        "dynamic" decodes at fixed shapes instead (models/static_decode.py; the same tags)."""
        tok = self.tokenizer
        b, dev = fused.shape[0], fused.device
        max_steps = max_steps or self.max_steps()
        if self.decoding != "dynamic":
            ids, probs = generate_static(self, fused, max_steps, tag_bias, self._static_steps(max_steps))
            return [self._pairs(seq, pr) for seq, pr in zip(ids, probs)]
        bos = self.gpt.transformer.wte(torch.full((b, 1), tok.BOS, device=dev))
        out = self.gpt(inputs_embeds=torch.cat([self.mapper(fused), bos], dim=1), use_cache=True)
        cache, bias = out.cache, self._vocab_bias(tag_bias)
        bias = torch.zeros((1, 1), device=dev) if bias is None else bias
        logits = out.logits[:, -1].float() + bias
        used = torch.zeros(b, logits.shape[-1], dtype=torch.bool, device=dev)
        used_keys = torch.zeros(b, (len(tok.keys) + 1) if self.closed else 1, dtype=torch.bool, device=dev)
        ids = torch.full((b, max_steps), tok.EOS, dtype=torch.long, device=dev)
        probs = torch.zeros(b, max_steps, device=dev)
        rows = torch.arange(b, device=dev)  # the products still writing, as rows of the full batch
        finished = torch.zeros(b, dtype=torch.bool, device=dev)  # without early exit: rows kept on EOS
        for step in range(max_steps):
            p = torch.softmax(self._constrain(logits, used[rows], used_keys[rows]), dim=-1)
            nxt = p.argmax(-1).masked_fill(finished[rows], tok.EOS)
            ids[rows, step], probs[rows, step] = nxt, p.gather(1, nxt[:, None])[:, 0]
            going = nxt != tok.EOS
            finished[rows] |= ~going
            if not going.any():
                break
            if early_exit and not going.all():  # finished rows leave the batch
                keep = going.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                rows, nxt = rows[keep], nxt[keep]
                bias = bias if bias.shape[0] == 1 else bias[keep]
            used[rows, nxt] = True
            if self.closed:
                k = self.key_of_token[nxt]
                used_keys[rows[k >= 0], k[k >= 0]] = True
            out = self.gpt(input_ids=nxt[:, None], cache=cache, use_cache=True)  # one new token per step
            cache, logits = out.cache, out.logits[:, -1].float() + bias
        return [self._pairs(seq, pr) for seq, pr in zip(ids.tolist(), probs.tolist())]

    @torch.no_grad()
    def generate_stock(self, fused: torch.Tensor, max_steps: int | None = None,
                       tag_bias: torch.Tensor | None = None) -> list[list[tuple[str, float]]]:
        """`generate` through transformers' own `GPT2LMHeadModel.generate` (greedy), with this decoder's
        rules as a logits processor: the reference path that `experiments/throughput.py` times and the
        tests hold `generate` to (same tags)."""
        from transformers import LogitsProcessorList

        tok = self.tokenizer
        b, dev = fused.shape[0], fused.device
        max_steps = max_steps or self.max_steps()
        bos = self.gpt.transformer.wte(torch.full((b, 1), tok.BOS, device=dev))
        embeds = torch.cat([self.mapper(fused), bos], dim=1)
        bias = self._vocab_bias(tag_bias)
        out = self.gpt.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=dev),
                                max_new_tokens=max_steps, do_sample=False, eos_token_id=tok.EOS, pad_token_id=tok.EOS,
                                logits_processor=LogitsProcessorList([_TagRules(self, bias)]),
                                output_scores=True, return_dict_in_generate=True)
        seqs = out.sequences[:, -len(out.scores):]
        probs = torch.stack([torch.softmax(s.float(), -1) for s in out.scores], 1).gather(2, seqs[:, :, None])[:, :, 0]
        return [self._pairs(seq, pr) for seq, pr in zip(seqs.tolist(), probs.tolist())]

    def _pairs(self, seq: list[int], pr: list[float]) -> list[tuple[str, float]]:
        tok = self.tokenizer
        if self.closed:
            out = []
            for i, p in zip(seq, pr):
                if i == tok.EOS:
                    break
                out.append((tok.tags[i - len(tok.SPECIALS)], p))
            return out
        # open vocabulary: a tag's score is the product of its tokens' probabilities
        cut = seq.index(tok.EOS) if tok.EOS in seq else len(seq)
        tags = tok.decode(seq[:cut])
        score = 1.0
        for p in pr[:cut]:
            score *= p
        out, keys = [], set()
        for t in tags:  # the same constraints, applied to the decoded text
            if ":" in t and tag_key(t) in tok.single_valued:
                if tag_key(t) in keys:
                    continue
                keys.add(tag_key(t))
            out.append((t, score ** (1 / max(len(tags), 1))))
        return out


class _TagRules:
    """The decoder's rules as a transformers logits processor: the word-score bias on the tag tokens,
    no PAD or BOS, no tag twice, one value of a single-valued key (TagDecoder._constrain)."""

    def __init__(self, decoder: TagDecoder, bias: torch.Tensor | None):
        self.decoder, self.bias = decoder, bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() + (0 if self.bias is None else self.bias)
        b, vocab = logits.shape
        used = torch.zeros(b, vocab, dtype=torch.bool, device=logits.device)
        keys = (len(self.decoder.tokenizer.keys) + 1) if self.decoder.closed else 1
        used_keys = torch.zeros(b, keys, dtype=torch.bool, device=logits.device)
        if input_ids.shape[1]:  # the tokens generated so far (the prompt was embeddings only)
            used.scatter_(1, input_ids, True)
            if self.decoder.closed:
                k = self.decoder.key_of_token[input_ids]
                rows = torch.arange(b, device=logits.device)[:, None].expand_as(k)
                used_keys[rows[k >= 0], k[k >= 0]] = True
        return self.decoder._constrain(logits, used, used_keys)
