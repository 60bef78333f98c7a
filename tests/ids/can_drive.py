"""Helpers for tests that write their own CAN traffic (not collected: no test_ prefix)."""

import numpy as np

from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.signals import words_to_bytes


def benign_frames(ts: np.ndarray, ids: np.ndarray, words: np.ndarray) -> FrameBatch:
    """Classic 8-byte benign frames, ordered by time: ``ts`` seconds, ``ids`` CAN IDs, ``words`` 64-bit payloads."""
    order = np.argsort(ts, kind="stable")
    m = len(ids)
    return FrameBatch(np.asarray(ts, np.float64)[order], np.asarray(ids)[order].astype(np.uint32), np.zeros(m, bool),
                      np.zeros(m, bool), np.zeros(m, bool), np.full(m, 8, np.uint8), np.full(m, 8, np.uint8),
                      words_to_bytes(np.asarray(words, np.uint64)[order]), np.zeros(m, np.int16), ["benign"])
