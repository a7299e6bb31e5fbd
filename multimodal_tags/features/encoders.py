"""The encoders a job needs, built once, with precision and the pretrained-weights check applied in
one place."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ModelConfig
from ..models.factory import create_image_encoder, create_text_encoder, require_pretrained
from ..models.image_encoders import ImageEncoder
from ..models.text_encoders import HFTextEncoder


@dataclass
class EncoderSet:
    """A text and an image encoder named by spec ("none": that modality is not encoded), each built on
    first use: a job with nothing to encode loads no weights.

    A real run refuses random weights unless `allow_random_weights`; `text_dim`/`image_dim`, when
    given (a model config's widths), must match what the encoders give."""

    text_spec: str = "none"
    image_spec: str = "none"
    text_max_length: int = 128
    image_size: int | None = None  # photo side in pixels (None: the image encoder's default)
    precision: str = "auto"
    allow_random_weights: bool = False
    device: str | None = None  # None: where the factory puts them (the CPU)
    compile: str = "auto"  # torch.compile for inference (models/compiled.py): auto, on or off
    text_dim: int | None = None
    image_dim: int | None = None
    _built: dict = field(default_factory=dict, repr=False)

    @classmethod
    def for_model(cls, cfg: ModelConfig, precision: str = "auto", allow_random_weights: bool = False,
                  device: str | None = None, compile: str = "auto") -> "EncoderSet":
        """The encoders a model config was trained on (on `device`; None: the CPU)."""
        return cls(cfg.text_encoder, cfg.image_encoder, cfg.text_max_length, cfg.image_size, precision,
                   allow_random_weights, device, compile, text_dim=cfg.text_dim, image_dim=cfg.image_dim)

    @property
    def text(self) -> HFTextEncoder | None:
        if self.text_spec == "none":
            return None
        if "text" not in self._built:
            self._built["text"] = self._ready(create_text_encoder(self.text_spec, max_length=self.text_max_length),
                                              self.text_dim, "text")
        return self._built["text"]

    @property
    def image(self) -> ImageEncoder | None:
        if self.image_spec == "none":
            return None
        if "image" not in self._built:
            encoder = create_image_encoder(self.image_spec)
            if self.image_size is not None:
                encoder.set_image_size(self.image_size)
            self._built["image"] = self._ready(encoder, self.image_dim, "image")
        return self._built["image"]

    def _ready(self, encoder, expected_dim: int | None, modality: str):
        if self.device is not None:
            encoder = encoder.to(self.device)
        encoder.set_precision(self.precision)
        encoder.set_compile(self.compile)
        require_pretrained(encoder, self.allow_random_weights)
        if expected_dim is not None and encoder.dim != expected_dim:
            raise ValueError(f"{modality} encoder {encoder.spec} gives {encoder.dim}-d vectors, config says "
                             f"{expected_dim}")
        return encoder
