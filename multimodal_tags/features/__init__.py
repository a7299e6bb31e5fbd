"""The feature layer: encoders built once (EncoderSet), the content-hashed cache filled with what it
lacks (encode), and products handed out as ready batches (FeatureSource)."""
from .catalog_features import encode_catalog
from .encode import EncodeStats, encode_images, encode_texts, load_features
from .encoders import EncoderSet
from .settings import RunConfig, default_cache_dir
from .source import FeatureSource, collate, to_batch

__all__ = ["EncodeStats", "EncoderSet", "FeatureSource", "RunConfig", "collate", "default_cache_dir",
           "encode_catalog", "encode_images", "encode_texts", "load_features", "to_batch"]
