"""Tag batches of products with a saved model: features from the cache (encoding only what is new),
then the Tagger, then output rows. Used by `mmtags tag`, `mmtags refresh` and anything that tags
products one batch at a time."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.feature_cache import FeatureCache
from ..files import file_sha256
from ..data.schema import Product
from ..features.encode import encode_and_load
from ..features.encoders import EncoderSet
from ..features.prefetch import Decoded, PhotoPrefetch, default_workers, pipelined
from ..features.settings import RunConfig
from ..features.source import FeatureSource
from ..models.lm_decoder import LMTagDecoder, has_lm_decoder
from ..models.static_decode import resolve_decoding
from ..models.tag_tokenizer import CATEGORY_KEY, tag_key
from ..models.tagger import RawPrediction, Tagger
from ..models.zero_shot import ZeroShotTags, ZeroShotUnavailable
from .rows import DEFAULT_TAG_SOURCE, prediction_rows, resolve_tag_source


DECODERS = ("auto", "scratch", "lm")


def _choose_lm_decoder(model_dir: str | Path, decoder: str, allow_random: bool) -> LMTagDecoder | None:
    """The model folder's LM decoder when `decoder` asks for it ("lm") or allows it ("auto": the LM decoder
    where the folder holds one), else None (the scratch GPT-2 decoder, if any)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    if decoder == "scratch" or (decoder == "auto" and not has_lm_decoder(model_dir)):
        return None
    if not has_lm_decoder(model_dir):
        raise ValueError(f"{model_dir} has no LM decoder (lm_decoder/): train one with `mmtags train-decoder`")
    return LMTagDecoder.load(model_dir, allow_random=allow_random)


def model_id(model_dir: str | Path) -> str:
    """Folder name + hash of the weights: a retrained model gets a new id even in the same folder."""
    folder = Path(model_dir)
    return f"{folder.resolve().name}-{file_sha256(folder / 'model.safetensors')[:12]}"


class BatchTagger:
    """A loaded model and its encoders (built on first use: a refresh with nothing to do loads none)."""

    def __init__(self, model_dir: str | Path, cache_dir: str | Path, settings: RunConfig | None = None,
                 tag_source: str = DEFAULT_TAG_SOURCE, decoder: str = "auto", ask_keys: Sequence[str] = ()):
        settings = settings or RunConfig()
        device = settings.device or "cpu"  # the encoders' device: the tagger runs beside them
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no GPU is visible to torch on this machine (use the CPU: leave "
                             f"--device out)")
        self.model = Tagger.load(model_dir).to(device)
        if self.model.decoder is not None:
            self.model.decoder.set_decoding(resolve_decoding(settings.decoding, device))
        self.model_id = model_id(model_dir)
        self.cache_dir = Path(cache_dir)
        self.lm_decoder = _choose_lm_decoder(model_dir, decoder, settings.allow_random_weights)
        self.ask_keys = [k.strip() for k in ask_keys if k.strip()]
        if self.ask_keys and self.lm_decoder is None:
            raise ValueError(f"{model_dir} has no LM decoder to ask keys of: train one with `mmtags train-decoder`")
        has_decoder = self.model.decoder is not None or self.lm_decoder is not None
        self.tag_source = resolve_tag_source(tag_source, has_decoder, str(model_dir))
        self.encoders = settings.encoders_for(self.model.cfg)
        self.zero_shot: ZeroShotTags | None = None  # see enable_zero_shot
        self.zero_shot_encoder = None  # the CLIP image encoder whose text tower scores them
        self.settings = settings

    def enable_zero_shot(self, tags: list[str], calibration: Sequence[Product], image_root: Path,
                         log: Callable[[str], None] = print, clip: str | None = None) -> None:
        """Score `tags` by CLIP image-text similarity too, with the model's own CLIP image encoder or the
        CLIP named by `clip` (an image encoder spec, e.g. mmtags-clip:FOLDER); thresholds from
        `calibration` products that carry labels for them (ZeroShotUnavailable without a CLIP)."""
        encoder = EncoderSet(image_spec=clip, precision=self.settings.precision,
                             allow_random_weights=self.settings.allow_random_weights).image if clip \
            else self.encoders.image
        if encoder is None:
            raise ZeroShotUnavailable("zero-shot tags need a CLIP image encoder; this model has no image encoder "
                                      "(pass --clip mmtags-clip:FOLDER)")
        self.zero_shot, self.zero_shot_encoder = ZeroShotTags.build(encoder, tags), encoder
        labelled = [p for p in calibration if p.image and set(p.tags) & set(tags)]
        if not labelled:
            log("zero-shot tags: no labelled validation products; thresholds are uncalibrated")
            return
        x, keep = self._clip_vectors(labelled, image_root)
        y = np.array([[t in p.tags for t in tags] for p in labelled])[keep]
        self.zero_shot.calibrate(x[keep], y)
        log(f"zero-shot tags calibrated on {int(keep.sum())} labelled validation products")

    def _clip_vectors(self, products: Sequence[Product], image_root: Path,
                      source: FeatureSource | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(CLIP photo vectors, has-photo mask): the model's own features when its image encoder is the
        CLIP, else the CLIP's vectors through the feature cache."""
        if self.zero_shot_encoder is self.encoders.image:
            source = source or self.features(products, image_root)
            return source.image.numpy(), source.has_image.numpy()
        with FeatureCache(self.cache_dir) as cache:
            feats = encode_and_load(products, cache, image_root, image_encoder=self.zero_shot_encoder, num_workers=0)
        return feats["image"], feats["has_image"]

    def features(self, products: Sequence[Product], image_root: Path, decoded: Decoded | None = None) -> FeatureSource:
        """The products' features, encoding what the cache lacks (`decoded`: photos already preprocessed)."""
        with FeatureCache(self.cache_dir) as cache:  # photos not in `decoded` are decoded in-process
            return FeatureSource.encode(products, self.encoders, cache, image_root, self.model.cfg, num_workers=0,
                                        decoded=decoded)

    def tag(self, products: Sequence[Product], image_root: Path, decoded: Decoded | None = None) -> list[dict]:
        """Output rows (id, category, tags with scores and sources, modality weights, model id, content
        hash) for a batch of products."""
        return self.tag_raw(products, image_root, decoded)[0]

    def tag_stream(self, batches: Iterable[list[Product]], image_root: Path, workers: int | None = None,
                   ahead: int = 2) -> Iterator[tuple[list[Product], list[dict]]]:
        """(batch, its rows) for each batch in order, with the photos the cache lacks decoded by `workers`
        processes up to `ahead` batches before their batch is tagged (0: in this process; None: as many as
        the machine has cores to spare, prefetch.default_workers)."""
        if workers is None:
            workers = default_workers(self.encoders.image.device.type if self.encoders.image is not None else "cpu")
        if workers <= 0 or self.encoders.image is None or hasattr(self.encoders.image, "trunk_encoder"):
            return ((batch, self.tag(batch, image_root)) for batch in batches)
        photos = PhotoPrefetch(self.encoders.image.transform, image_root, workers)

        def start(batch):
            return photos.submit(self._photos_to_encode(batch))

        def finish(batch, futures):
            return batch, self.tag(batch, image_root, photos.result(futures))

        def stream():
            with photos:
                yield from pipelined(batches, start, finish, ahead)
        return stream()

    def _photos_to_encode(self, products: Sequence[Product]) -> list[tuple[str, str]]:
        """(hash, reference) of the products' photos that the feature cache lacks."""
        refs = {p.image_hash: p.image for p in products if p.image and p.image_hash}
        with FeatureCache(self.cache_dir) as cache:
            return [(h, refs[h]) for h in cache.missing(self.encoders.image.cache_key(), refs)]

    @torch.no_grad()
    def tag_raw(self, products: Sequence[Product], image_root: Path,
                decoded: Decoded | None = None) -> tuple[list[dict], RawPrediction]:
        """Output rows and the scores behind them (before thresholds)."""
        source = self.features(products, image_root, decoded)
        generate = self.tag_source != "head"
        raw = self.model.predict_raw(source.batch(), generate=generate and self.lm_decoder is None)
        floor = None
        if generate and self.lm_decoder is not None:
            raw.generated, floor = self._lm_tags(products, raw), self.lm_decoder.floor
        rows = prediction_rows(products, self.model.prediction_dicts(raw, decoder_floor=floor), self.tag_source,
                               self.model_id)
        if self.ask_keys:
            self._add_asked(rows, products, raw.fused)
        if self.zero_shot is not None:
            self._add_zero_shot(rows, self._clip_vectors(products, image_root, source))
        return rows, raw

    def _lm_tags(self, products: Sequence[Product], raw: RawPrediction) -> list[dict[str, float]]:
        """The LM decoder's tags per product (its `category:` answer aside: the category head names it),
        fused with the heads' prior where the decoder's `prior_weight` asks for it."""
        lm = self.lm_decoder
        prior = None if lm.cfg.prior_weight <= 0 else lm.prior_matrix(
            self.model.tags, raw.tag_probs, self.model.categories, raw.category_probs)
        generated = lm.generate(raw.fused, [p.title for p in products], [p.description for p in products], prior)
        return [{t: s for t, s in g if tag_key(t) != CATEGORY_KEY} for g in generated]

    def _add_asked(self, rows: list[dict], products: Sequence[Product], fused: torch.Tensor) -> None:
        """Each asked key's value in the LM's own words: `asked` {key: [value, score]} on every row, and the
        tag `key:value` (source "asked") where the row's tags do not answer that key yet."""
        titles, descriptions = [p.title for p in products], [p.description for p in products]
        for key in self.ask_keys:
            answers = self.lm_decoder.ask(fused, titles, key, descriptions)
            for row, (value, score) in zip(rows, answers):
                row.setdefault("asked", {})[key] = [value, round(score, 5)]
                tag = f"{key}:{value}"
                if value and not any(tag_key(t) == key for t in row["tags"]):
                    row["tags"].append(tag)
                    row["tag_scores"][tag] = round(score, 5)
                    row["tag_sources"][tag] = "asked"

    def _add_zero_shot(self, rows: list[dict], clip_vectors: tuple[np.ndarray, np.ndarray]) -> None:
        extra_tags = self.zero_shot.predict(*clip_vectors)
        for row, extra in zip(rows, extra_tags):
            for tag, sim in extra.items():
                if tag not in row["tag_scores"]:
                    row["tags"].append(tag)
                    row["tag_scores"][tag] = round(sim, 5)
                    row["tag_sources"][tag] = "zero-shot"
