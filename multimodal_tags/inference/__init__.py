"""The one inference path: features (a FeatureSource) -> Tagger -> predictions -> output rows.

Evaluation, training's final scoring, `mmtags tag`, `mmtags refresh` and the service all go through
it; it depends only on the models and the feature layer."""
from .batch_tagger import BatchTagger, model_id
from .predict import predict_source
from .rows import DEFAULT_TAG_SOURCE, TAG_SOURCES, chosen_tags, prediction_rows, resolve_tag_source, score_rows
from .scoring import score_split
from .thresholds import tag_matrix, tune_decoder_threshold, tune_head_thresholds

__all__ = ["BatchTagger", "DEFAULT_TAG_SOURCE", "TAG_SOURCES", "chosen_tags", "model_id", "predict_source",
           "prediction_rows", "resolve_tag_source", "score_rows", "score_split", "tag_matrix", "tune_decoder_threshold",
           "tune_head_thresholds"]
