"""Adapted detectors, one module per job: files (:mod:`.detector`: save/load, safetensors + JSON,
never pickle), few-shot adaptation (:mod:`.adapt`) and streaming detection (:mod:`.stream`).

Each works for every traffic kind through the detector's :class:`~fastmaml.apps.ids.traffic.Traffic`
(looked up by the name saved with it); none branches on the kind.
"""

from fastmaml.apps.ids.detect.adapt import AdaptInfo, adapt_detector, balanced_cross_entropy, calibrate_detector
from fastmaml.apps.ids.detect.detector import Detector, check_capture, load_detector, predict_proba, save_detector
from fastmaml.apps.ids.detect.stream import DetectSummary, ScoredCapture, score_capture, stream_detect

__all__ = ["AdaptInfo", "DetectSummary", "Detector", "ScoredCapture", "adapt_detector", "balanced_cross_entropy",
           "calibrate_detector", "check_capture", "load_detector", "predict_proba", "save_detector", "score_capture",
           "stream_detect"]
