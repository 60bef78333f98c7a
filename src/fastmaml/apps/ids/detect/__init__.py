"""Adapted detectors, one module per job: files (:mod:`.detector`: save/load, safetensors + JSON,
never pickle), few-shot adaptation (:mod:`.adapt`), streaming detection (:mod:`.stream`) and live
monitoring of a CAN bus through python-can (:mod:`.monitor`, the one CAN-only job).

Each works for every traffic kind through the detector's :class:`~fastmaml.apps.ids.traffic.Traffic`
(looked up by the name saved with it); none branches on the kind (the monitor refuses other kinds).
"""

from fastmaml.apps.ids.detect.adapt import AdaptInfo, adapt_detector, balanced_cross_entropy, calibrate_detector
from fastmaml.apps.ids.detect.detector import Detector, check_capture, load_detector, predict_proba, save_detector
from fastmaml.apps.ids.detect.monitor import FrameScorer, MonitorSummary, monitor, open_bus
from fastmaml.apps.ids.detect.scores import ScoredCapture, score_capture
from fastmaml.apps.ids.detect.stream import DetectSummary, stream_detect

__all__ = ["AdaptInfo", "DetectSummary", "Detector", "FrameScorer", "MonitorSummary", "ScoredCapture", "adapt_detector",
           "balanced_cross_entropy", "calibrate_detector", "check_capture", "load_detector", "monitor", "open_bus",
           "predict_proba", "save_detector", "score_capture", "stream_detect"]
