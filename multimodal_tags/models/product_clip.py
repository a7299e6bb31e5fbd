"""Our own CLIP for product photos, built with open_clip from towers that load offline.

Image tower: the packaged ImageNet EfficientNet-Lite0 (timm) + an MLP projection; text tower: the
packaged MiniLM-L6 (a BERT, mean-pooled) + an MLP projection. The architecture is an open_clip
model config (`clip_configs/*.json`, registered with `open_clip.add_model_config`), so open_clip
builds it, trains it with its own `ClipLoss` (train/clip_train.py) and loads it back.

A trained model is a folder open_clip itself loads (`open_clip.create_model("local-dir:FOLDER")`):
`open_clip_config.json`, `open_clip_model.safetensors`, the text tower's tokenizer and BERT config,
and `mmtags_clip.json` (how it was trained, what it measured). The image encoder spec
`mmtags-clip:FOLDER` makes it an image encoder of the tagger, with a text tower for zero-shot tags.

Photos go through the trunk's own timm preprocessing (the same as the `effnet-lite0` encoder), so a
locked trunk computes exactly the `effnet-lite0` vectors: `trunk_encoder()` exposes it, and the
feature layer reuses those cached vectors and only applies the projection (features/encode.py).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .encoder_base import Encoder, EncoderOutput, WeightsUnavailable, state_dict_hash
from .image_encoders import OpenClipImageEncoder, TimmImageEncoder, packaged_efficientnet_lite0, timm_transform
from .text_encoders import packaged_minilm_dir

CONFIG_DIR = Path(__file__).parent / "clip_configs"
DEFAULT_CONFIG = "mmtags-lite0-minilm"
WEIGHTS_FILE = "open_clip_model.safetensors"
META_FILE = "mmtags_clip.json"
SPEC_PREFIX = "mmtags-clip:"
WITH_TRUNK = "+trunk"  # spec suffix: the trunk's vector beside the CLIP vector, concatenated
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "config.json")


def register_configs() -> list[str]:
    """Register our open_clip model configs (idempotent); returns their names."""
    import open_clip

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    if not set(names) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)
    return names


def model_config(name: str = DEFAULT_CONFIG) -> dict:
    """The open_clip model config `name`, as open_clip's registry holds it."""
    import open_clip

    register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown CLIP config {name!r}; ours: {', '.join(register_configs())}")
    return cfg


def _tower_overrides(cfg: dict, text_folder: Path, text_pretrained: bool) -> dict:
    """Point the text tower at a local BERT folder (no hub) and never let timm download weights."""
    text_cfg = dict(cfg["text_cfg"], hf_model_name=str(text_folder), hf_tokenizer_name=str(text_folder),
                    hf_model_pretrained=text_pretrained)
    vision_cfg = dict(cfg["vision_cfg"], timm_model_pretrained=False)
    return {"text_cfg": text_cfg, "vision_cfg": vision_cfg}


def build_clip(name: str = DEFAULT_CONFIG, text_folder: str | Path | None = None,
               image_trunk_weights: dict[str, torch.Tensor] | None = None, image_size: int | None = None):
    """A new CLIP from config `name` through `open_clip.create_model`, its towers pretrained: the text
    tower from `text_folder` (default: the packaged MiniLM-L6), the image trunk from
    `image_trunk_weights` (default: the packaged EfficientNet-Lite0). Projections start random.
    `image_size` overrides the config's photo side (a convolutional trunk takes any size)."""
    import open_clip

    cfg = model_config(name)
    folder = Path(text_folder) if text_folder else packaged_minilm_dir()
    overrides = _tower_overrides(cfg, folder, text_pretrained=True)
    if image_size:
        overrides["vision_cfg"]["image_size"] = image_size
    model = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=True, **overrides)
    if image_trunk_weights is None:
        image_trunk_weights = packaged_efficientnet_lite0().model.state_dict()
    model.visual.trunk.load_state_dict(image_trunk_weights)
    return model


def clip_tokenizer(folder: str | Path, context_length: int):
    """open_clip's HF tokenizer for the text tower in `folder`."""
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(str(folder), context_length=context_length)


def save_clip(model, folder: str | Path, name: str, text_folder: str | Path, meta: dict) -> Path:
    """Write a trained CLIP as a folder open_clip loads with `local-dir:` (weights as safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in _TOKENIZER_FILES:
        if (Path(text_folder) / f).is_file():
            shutil.copy2(Path(text_folder) / f, folder / f)
    cfg = model_config(name)
    cfg.update(_tower_overrides(cfg, folder.resolve(), text_pretrained=False))
    cfg["vision_cfg"]["image_size"] = _trained_size(model) or cfg["vision_cfg"]["image_size"]
    trunk = model.visual.trunk
    preprocess = {"size": list(model.visual.image_size), "mean": list(trunk.pretrained_cfg.get("mean", (0.5,) * 3)),
                  "std": list(trunk.pretrained_cfg.get("std", (0.5,) * 3)), "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess},
                                                             indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / META_FILE).write_text(json.dumps({"config": name, **meta}, indent=2) + "\n")
    return folder


def load_clip(folder: str | Path):
    """(model, tokenizer, meta) of a CLIP saved by `save_clip`, wherever the folder now lies."""
    import open_clip

    folder = Path(folder).expanduser()
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / "open_clip_config.json").is_file():
        raise WeightsUnavailable(f"no trained CLIP in {folder} (expected open_clip_config.json and {WEIGHTS_FILE}); "
                                 f"train one with `mmtags clip train`")
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.create_model(f"local-dir:{folder.resolve()}", **_tower_overrides(cfg, folder.resolve(), False))
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    return model.eval(), clip_tokenizer(folder, cfg["text_cfg"].get("context_length", 32)), meta


def _trained_size(clip_model) -> int | None:
    """The photo side the image tower was trained at (open_clip's `image_size`; None: the trunk's default)."""
    size = getattr(clip_model.visual, "image_size", None)
    side = size[0] if isinstance(size, (tuple, list)) else size
    return int(side) if side else None


class ProductClipEncoder(OpenClipImageEncoder):
    """Image encoder = our CLIP's image tower; its text tower scores zero-shot tags. With `with_trunk`,
    the vector is the trunk's pooled vector and the CLIP vector side by side."""

    def __init__(self, spec: str, clip_model, tokenizer, meta: dict, with_trunk: bool = False):
        trunk = clip_model.visual.trunk
        super().__init__(spec, clip_model, timm_transform(trunk, _trained_size(clip_model)), tokenizer=tokenizer)
        self.meta, self.with_trunk = meta, with_trunk
        if with_trunk:
            self.dim += int(trunk.num_features)

    def set_image_size(self, size: int) -> "ProductClipEncoder":
        """The convolutional trunk takes any size: timm's preprocessing at `size` x `size`."""
        self.transform = timm_transform(self.clip.visual.trunk, size)
        return self

    def cache_id(self) -> str:
        # the folder is named by its weights (in the key anyway), not its path
        return "mmtags-clip" + (WITH_TRUNK if self.with_trunk else "")

    def forward(self, pixels: torch.Tensor, return_tokens: bool = False) -> EncoderOutput:
        pooled = self.clip.visual.trunk(pixels)
        return EncoderOutput(self._from_trunk(pooled))

    def _from_trunk(self, pooled: torch.Tensor) -> torch.Tensor:
        projected = self.clip.visual.head(pooled)
        return torch.cat([pooled, projected], dim=-1) if self.with_trunk else projected

    def trunk_encoder(self) -> TimmImageEncoder:
        """The image trunk alone as an encoder (its pooled vector, before the projection). A locked trunk
        has the packaged EfficientNet-Lite0's weights, so its cache key is that encoder's."""
        spec = self.meta.get("trunk_spec") or f"{self.spec}#trunk"
        trunk = TimmImageEncoder(spec, self.clip.visual.trunk, self.transform)
        trunk.precision = self.precision
        return trunk

    def project(self, trunk_vectors: torch.Tensor) -> torch.Tensor:
        """The image tower's output from trunk vectors (what forward() gives from pixels)."""
        with torch.no_grad():
            return self._from_trunk(trunk_vectors.to(self.device).float()).float()


def load_product_clip(spec: str) -> ProductClipEncoder:
    """`mmtags-clip:FOLDER` -> the image encoder of that trained CLIP (`...FOLDER+trunk`: with the trunk's
    vector beside it)."""
    folder = spec[len(SPEC_PREFIX):]
    with_trunk = folder.endswith(WITH_TRUNK)
    model, tokenizer, meta = load_clip(folder[:-len(WITH_TRUNK)] if with_trunk else folder)
    return ProductClipEncoder(spec, model, tokenizer, meta, with_trunk)


class ClipTextTrunk(Encoder):
    """The CLIP text tower without its projection: the pooled BERT vector of each text. Locked-tower
    training caches these once (feature cache) and trains the projections on them."""

    def __init__(self, clip_model, tokenizer, spec: str = "clip-text-trunk"):
        super().__init__()
        self.spec, self.text, self.tokenizer = spec, clip_model.text, tokenizer
        self.dim = int(self.text.config.hidden_size)

    def preprocessing_id(self) -> str:
        return f"HFTokenizer:{len(self.tokenizer.tokenizer)}|context={self.tokenizer.context_length}|pool=mean"

    def weights_id(self) -> str:  # only the transformer computes the cached vectors, not the projection
        if not hasattr(self, "_weights_id"):
            self._weights_id = state_dict_hash(self.text.transformer)
        return self._weights_id

    def token_lengths(self, texts: list[str]) -> list[int]:
        return (self.tokenizer(texts) != self.text.config.pad_token_id).sum(1).tolist()

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled vectors of token ids (gradients flow where the tower is unlocked)."""
        mask = (tokens != self.text.config.pad_token_id).long()
        return self.text.pooler(self.text.transformer(input_ids=tokens, attention_mask=mask), mask)

    @torch.no_grad()
    def encode(self, texts: list[str], return_tokens: bool = False) -> EncoderOutput:
        self.eval()
        with self.autocast():
            return EncoderOutput(self.pooled(self.tokenizer(texts).to(self.device)).float())
