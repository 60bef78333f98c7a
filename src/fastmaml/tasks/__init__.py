"""Few-shot tasks: the :class:`TaskBatch` container and episode samplers."""

from fastmaml.core.batch import TaskBatch
from fastmaml.tasks.episodes import EpisodeIndices, EpisodeSampler, sample_distinct, uint8_images_to_float

__all__ = ["TaskBatch", "EpisodeSampler", "EpisodeIndices", "sample_distinct", "uint8_images_to_float"]
