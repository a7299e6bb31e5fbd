"""A pretrained causal LM as the tag decoder: fused vector -> k prefix embeddings -> title prompt -> tags.

    [p_1 .. p_k] "Title: Roadster Men Navy Blue Checked Casual Shirt\\nDescription: ...\\nTags:"
        -> " category: shirts; colour: navy blue; pattern: checked; ..." <eos>

As in ClipCap, an MLP mapper turns the tagger's fused vector into k embeddings in the LM's input space; the
product's title and the start of its description follow as words, so the LM reads both the photo-and-text
vector and the text itself. The
LM is adapted with LoRA (peft) on every linear layer, or fine-tuned whole (`finetune: full`, for a GPU).

Decoding is batched and greedy over a KV cache, walking the vocabulary's trie (models/tag_text.py): closed
keys give only vocabulary values, each tag with a score. `ask` prompts ` key:` after the title and lets the
LM write the value freely: the open vocabulary, for keys a shop names but never labelled.

The model folder keeps the mapper and the adapters (safetensors) and names the base LM by its spec and the
fingerprint of its weights; it never copies the base weights, and refuses a base whose weights differ.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import LMDecoderConfig, dataclass_from_dict, to_dict
from .causal_lm import LoadedLM, load_causal_lm
from .decoder import MLPMapper, length_groups
from .encoder_base import WeightsUnavailable, resolve_precision
from .tag_text import PROMPT_DESCRIPTION, PROMPT_END, PROMPT_TITLE, TagTrie, TrieWalk, key_prompt, value_from_text
from .tag_tokenizer import CATEGORY_KEY

FOLDER, FORMAT = "lm_decoder", "mmtags-lm-decoder/1"
DECODE_BATCH = 64  # products per LM call when decoding (the KV cache grows with the batch)
PRIOR_MIN = 1e-4  # a prior is taken as at least this, so that the heads can lower a token but never forbid it


class BaseModelMismatch(ValueError):
    """A saved LM decoder whose base LM's weights are not the ones it was trained on."""


class LMTagDecoder(nn.Module):
    def __init__(self, lm: LoadedLM, trie: TagTrie, fused_dim: int, cfg: LMDecoderConfig):
        super().__init__()
        self.cfg, self.trie, self.tokenizer = cfg, trie, lm.tokenizer
        self.spec, self.base_sha256, self.random_weights = lm.spec, lm.weights_sha256, lm.random_weights
        self.fused_dim = fused_dim
        self.floor = 0.0  # generated tags scoring under it are not reported (tuned on validation)
        self.lm = _adapt(lm.model, cfg)
        self.hf = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        width = self.hf.get_input_embeddings().embedding_dim
        self.mapper = MLPMapper(fused_dim, cfg.prefix_length, width)
        self.context = getattr(self.hf.config, "max_position_embeddings", None) or getattr(
            self.hf.config, "n_positions", None)
        self._words = {w: self.tokenizer.encode(w, add_special_tokens=False)
                       for w in (PROMPT_TITLE, PROMPT_DESCRIPTION, PROMPT_END)}

    @property
    def device(self) -> torch.device:
        return next(self.mapper.parameters()).device

    # ---- inputs -----------------------------------------------------------------------------------------
    def prompt_ids(self, titles: list[str], descriptions: list[str | None] | None = None) -> list[list[int]]:
        """`Title: ...\\nDescription: ...\\nTags:` per product: the title cut to `max_prompt_tokens` tokens,
        the description to `description_tokens` (left out when 0 or empty)."""
        descriptions = descriptions or [None] * len(titles)
        out = []
        for title, desc in zip(titles, descriptions):
            ids = self._words[PROMPT_TITLE] + self._cut(title, self.cfg.max_prompt_tokens)
            if desc and self.cfg.description_tokens > 0:
                ids += self._words[PROMPT_DESCRIPTION] + self._cut(desc, self.cfg.description_tokens)
            out.append(ids + self._words[PROMPT_END])
        return out

    def _cut(self, text: str | None, n: int) -> list[int]:
        return self.tokenizer.encode(" ".join((text or "").split()[:4 * n]), add_special_tokens=False)[:n]

    def _autocast(self, device: torch.device):
        precision = resolve_precision(self.cfg.precision, device)
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def _embed(self, prefix: torch.Tensor, seqs: list[list[int]], left: bool):
        """(inputs_embeds, attention_mask, position_ids) of [prefix, seq] per row, padded to one length on
        the left (generation: every row's next token is at the end) or on the right (training)."""
        b, k, dev = prefix.shape[0], prefix.shape[1], prefix.device
        width = k + max(map(len, seqs))
        if width > (self.context or width):
            raise ValueError(f"a prompt of {width} positions is over the LM's context of {self.context}: "
                             f"lower max_prompt_tokens or max_tags")
        ids = torch.full((b, width - k), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for r, s in enumerate(seqs):
            start = width - k - len(s) if left else 0
            ids[r, start:start + len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, start:start + k + len(s)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        words = self.hf.get_input_embeddings()(ids)
        embeds = torch.zeros((b, width, words.shape[-1]), dtype=words.dtype, device=dev)
        for r, s in enumerate(seqs):  # the prefix sits just before each row's own words
            start = width - k - len(s) if left else 0
            embeds[r, start:start + k] = prefix[r].to(words.dtype)
            embeds[r, start + k:start + k + len(s)] = words[r, start:start + len(s)]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, positions

    # ---- training ---------------------------------------------------------------------------------------
    def forward(self, fused: torch.Tensor, prompts: list[list[int]], targets: list[list[int]]) -> torch.Tensor:
        """Teacher-forced cross-entropy over the target tokens (prompt positions carry no loss); rows of
        similar length go through the LM together (decoder.length_groups)."""
        prefix = self.mapper(fused)
        k = prefix.shape[1]
        lengths = torch.tensor([len(p) + len(t) for p, t in zip(prompts, targets)])
        backbone, head = self.hf.base_model, self.hf.get_output_embeddings()
        loss_sum, n_labels = fused.new_zeros((), dtype=torch.float32), 0
        with self._autocast(fused.device):
            for rows in length_groups(lengths, k):
                rows = rows.tolist()
                seqs = [prompts[r] + targets[r] for r in rows]
                embeds, mask, positions = self._embed(prefix[rows], seqs, left=False)
                labels = torch.full(mask.shape, -100, dtype=torch.long)
                for j, r in enumerate(rows):  # position p predicts the token at p + 1
                    start = k + len(prompts[r])
                    labels[j, start - 1:start - 1 + len(targets[r])] = torch.tensor(targets[r])
                labels = labels.to(fused.device)
                hidden = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
                keep = labels != -100
                logits = head(hidden[keep]).float()
                loss_sum = loss_sum + F.cross_entropy(logits, labels[keep], reduction="sum")
                n_labels += int(keep.sum())
        return loss_sum / max(n_labels, 1)

    def trainable_groups(self) -> list[dict]:
        """Optimizer groups: the mapper at mapper_lr; the adapters (or, under `full`, the LM at a tenth)."""
        lm = [p for p in self.lm.parameters() if p.requires_grad]
        lm_lr = self.cfg.lr if self.cfg.finetune == "lora" else self.cfg.lr / 10
        return [{"params": list(self.mapper.parameters()), "lr": self.cfg.mapper_lr},
                {"params": lm, "lr": lm_lr}]

    # ---- decoding ---------------------------------------------------------------------------------------
    def _prefill(self, fused: torch.Tensor, seqs: list[list[int]]):
        embeds, mask, positions = self._embed(self.mapper(fused), seqs, left=True)
        out = self.hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
        return out, mask, positions[:, -1]

    def _continue(self, out, keep: list[int], rows: list[int], best: torch.Tensor, mask: torch.Tensor,
                  last: torch.Tensor):
        """One more step for the rows `keep` (positions in `rows`, the products still writing): the others
        leave the batch and its KV cache, then the kept rows' tokens `best` go through the LM. Returns
        (LM output, rows, mask, last position)."""
        if len(keep) < len(rows):
            out.cache.batch_select_indices(torch.tensor(keep, device=best.device))
            rows, best, mask, last = [rows[j] for j in keep], best[keep], mask[keep], last[keep]
        out, mask, last = self._next(best, out.cache, mask, last)
        return out, rows, mask, last

    def _next(self, token: torch.Tensor, cache, mask: torch.Tensor, last: torch.Tensor):
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = self.hf(input_ids=token[:, None], attention_mask=mask, position_ids=(last + 1)[:, None],
                      cache=cache, use_cache=True)
        return out, mask, last + 1

    def prior_matrix(self, tags: list[str], tag_probs: torch.Tensor, categories: list[str],
                     category_probs: torch.Tensor) -> torch.Tensor:
        """The tagger's heads as a prior over the trie's tags [n, len(trie.tags)]: the tag head's probability
        of each tag, the category head's of each `category:NAME`; 0 for a tag the heads do not know."""
        prior = torch.zeros(tag_probs.shape[0], len(self.trie.tags))
        for names, probs, prefix in ((tags, tag_probs, ""), (categories, category_probs, f"{CATEGORY_KEY}:")):
            cols = [(self.trie.index[prefix + n], j) for j, n in enumerate(names) if prefix + n in self.trie.index]
            if cols:
                to, frm = zip(*cols)
                prior[:, list(to)] = probs[:, list(frm)].float().cpu()
        return prior

    @torch.no_grad()
    def generate(self, fused: torch.Tensor, titles: list[str], descriptions: list[str | None] | None = None,
                 priors: torch.Tensor | None = None) -> list[list[tuple[str, float]]]:
        """Greedy decoding constrained to the vocabulary's trie; per product, (tag, score) in order. With
        `priors` (`prior_matrix`) and `cfg.prior_weight` > 0, shallow fusion with the tagger's heads; a tag's
        score is then the product of its tokens' fused probabilities. Any number of products: they go
        through the LM DECODE_BATCH at a time."""
        return _in_batches(self._generate_batch, fused, titles, descriptions, priors)

    def _generate_batch(self, fused: torch.Tensor, titles: list[str], descriptions: list[str | None],
                        priors: torch.Tensor | None = None) -> list[list[tuple[str, float]]]:
        walks = [TrieWalk(self.trie) for _ in titles]
        max_steps = self.cfg.max_tags * max((len(p) for p in self.trie.pieces), default=1) + 1
        if self.cfg.prior_weight <= 0:
            priors = None
        self._walk(fused, self.prompt_ids(titles, descriptions), walks, max_steps, priors)
        return [w.tags for w in walks]

    def _walk(self, fused: torch.Tensor, prompts: list[list[int]], walks: list[TrieWalk], max_steps: int,
              priors: torch.Tensor | None = None) -> None:
        """Greedy decoding of every row along its own trie walk until the walk is done (or `max_steps`);
        finished rows leave the batch and its KV cache."""
        self.eval()
        fused, rows = fused.to(self.device), list(range(len(walks)))  # rows: the products still writing
        with self._autocast(fused.device):
            out, mask, last = self._prefill(fused, prompts)
            for _ in range(max_steps):
                logits = out.logits[:, -1].float()
                probs = self._step_probs(logits, [walks[r] for r in rows],
                                         None if priors is None else priors[rows].tolist())
                best = probs.argmax(-1)
                best_p = probs.gather(1, best[:, None])[:, 0]
                for j, r in enumerate(rows):
                    walks[r].step(int(best[j]), float(best_p[j]))
                keep = [j for j, r in enumerate(rows) if not walks[r].done]
                if not keep:
                    break
                out, rows, mask, last = self._continue(out, keep, rows, best, mask, last)

    def _step_probs(self, logits: torch.Tensor, walks: list[TrieWalk], priors: list[list[float]] | None):
        """Next-token probabilities of each row over the tokens its walk allows; with priors, the LM's
        log-probabilities plus prior_weight x the log of each token's prior, normalised again."""
        if priors is None:
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            for j, walk in enumerate(walks):
                allowed[j, walk.allowed()] = True
            return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        bias = torch.full_like(logits, float("-inf"))
        for j, (walk, prior) in enumerate(zip(walks, priors)):
            tokens, best = walk.allowed_with_prior(prior)
            bias[j, tokens] = self.cfg.prior_weight * torch.tensor(best).clamp(min=PRIOR_MIN).log()
        return torch.softmax(torch.log_softmax(logits, dim=-1) + bias, dim=-1)

    @torch.no_grad()
    def ask(self, fused: torch.Tensor, titles: list[str], key: str,
            descriptions: list[str | None] | None = None) -> list[tuple[str, float]]:
        """The LM's own words for `key` per product, prompted ` key:` after the product's prompt: greedy,
        unconstrained, up to `;`, a new line or end-of-text. (value, score), the score the product of the
        value's token probabilities; ("", 0.0) where it wrote none. Any number of products, as `generate`."""
        return _in_batches(lambda f, t, d: self._ask_batch(f, t, key, d), fused, titles, descriptions)

    def _ask_batch(self, fused: torch.Tensor, titles: list[str], key: str,
                   descriptions: list[str | None]) -> list[tuple[str, float]]:
        self.eval()
        fused = fused.to(self.device)
        ask_ids = self.tokenizer.encode(key_prompt(key), add_special_tokens=False)
        prompts = [p + ask_ids for p in self.prompt_ids(titles, descriptions)]
        texts, scores = [[] for _ in prompts], [1.0] * len(prompts)
        rows, eos = list(range(len(prompts))), self.tokenizer.eos_token_id
        with self._autocast(fused.device):
            out, mask, last = self._prefill(fused, prompts)
            for _ in range(self.cfg.max_value_tokens):
                best_p, best = torch.softmax(out.logits[:, -1].float(), dim=-1).max(-1)
                going = []
                for j, r in enumerate(rows):
                    piece = self.tokenizer.decode([int(best[j])])
                    if int(best[j]) == eos or ";" in piece or "\n" in piece:
                        texts[r].append(piece.split(";")[0].split("\n")[0] if int(best[j]) != eos else "")
                        continue
                    texts[r].append(piece)
                    scores[r] *= float(best_p[j])
                    going.append(j)
                if not going:
                    break
                out, rows, mask, last = self._continue(out, going, rows, best, mask, last)
        written = ["".join(t) for t in texts]
        return [(value_from_text(w), s if w.strip() else 0.0) for w, s in zip(written, scores)]

    # ---- persistence ------------------------------------------------------------------------------------
    def save(self, model_dir: str | Path) -> Path:
        """Write `MODEL_DIR/lm_decoder/`: decoder.json (base spec and fingerprint, config, vocabulary),
        mapper.safetensors, and adapter.safetensors (LoRA) or lm.safetensors (`full`)."""
        folder = Path(model_dir) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "base": self.spec, "base_sha256": self.base_sha256, "fused_dim": self.fused_dim,
                "random_weights": self.random_weights, "floor": self.floor, "config": to_dict(self.cfg),
                "vocabulary": self.trie.to_dict()}
        save_file({k: v.detach().cpu().contiguous() for k, v in self.mapper.state_dict().items()},
                  str(folder / "mapper.safetensors"))
        save_file(self._lm_state(), str(folder / ("adapter.safetensors" if self.cfg.finetune == "lora"
                                                  else "lm.safetensors")))
        (folder / "decoder.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        return folder

    def _lm_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.finetune == "lora":
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.lm)
        else:  # tied weights (the LM head is the input embedding) are stored once
            state = {k: v for k, v in self.hf.state_dict().items() if k not in _tied_names(self.hf)}
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    @classmethod
    def load(cls, model_dir: str | Path, allow_random: bool = False) -> "LMTagDecoder":
        """The LM decoder saved in a model folder, on its base LM (loaded by spec and checked against the
        recorded fingerprint: BaseModelMismatch when the weights differ)."""
        folder = Path(model_dir) / FOLDER
        meta = json.loads((folder / "decoder.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: written as {meta.get('format')!r}; this version reads {FORMAT!r}")
        lm = load_causal_lm(meta["base"])
        if lm.random_weights and not allow_random:
            raise WeightsUnavailable(f"{folder}: its base LM {meta['base']!r} has random weights (tests only)")
        if lm.weights_sha256 != meta["base_sha256"]:
            raise BaseModelMismatch(
                f"{folder} was trained on {meta['base']!r} with weights {meta['base_sha256'][:12]}..., but the "
                f"weights loaded now are {lm.weights_sha256[:12]}...: use the base it was trained on, or retrain")
        cfg = dataclass_from_dict(LMDecoderConfig, meta["config"])
        voc = meta["vocabulary"]
        dec = cls(lm, TagTrie(lm.tokenizer, voc["tags"], voc["single_valued"], voc["key_order"]),
                  meta["fused_dim"], cfg)
        dec.floor = float(meta.get("floor", 0.0))
        dec.mapper.load_state_dict(load_file(str(folder / "mapper.safetensors")))
        if cfg.finetune == "lora":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(dec.lm, load_file(str(folder / "adapter.safetensors")))
        else:
            dec.hf.load_state_dict(load_file(str(folder / "lm.safetensors")), strict=False)
        return dec.eval()


def _in_batches(decode, fused: torch.Tensor, titles: list[str], descriptions: list[str | None] | None,
                priors: torch.Tensor | None = None) -> list:
    """`decode(fused, titles, descriptions[, priors])` over DECODE_BATCH products at a time, results in order."""
    descriptions = descriptions or [None] * len(titles)
    out = []
    for s in range(0, len(titles), DECODE_BATCH):
        part = (fused[s:s + DECODE_BATCH], titles[s:s + DECODE_BATCH], descriptions[s:s + DECODE_BATCH])
        out += decode(*part) if priors is None else decode(*part, priors[s:s + DECODE_BATCH])
    return out


def has_lm_decoder(model_dir: str | Path) -> bool:
    return (Path(model_dir) / FOLDER / "decoder.json").is_file()


def _adapt(model: nn.Module, cfg: LMDecoderConfig) -> nn.Module:
    """LoRA adapters on every linear layer but the output (the base frozen), or the whole LM trainable."""
    if cfg.finetune == "full":
        return model.train()
    if cfg.finetune != "lora":
        raise ValueError(f"decoder finetune {cfg.finetune!r} is not one of lora, full")
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                            target_modules="all-linear"))


def _tied_names(model: nn.Module) -> set[str]:
    """Names of state entries that share storage with an earlier one (the tied LM head)."""
    seen, tied = set(), set()
    for name, t in model.state_dict().items():
        ptr = t.data_ptr()
        if ptr in seen:
            tied.add(name)
        seen.add(ptr)
    return tied
