"""Precision, recall and F1: how decisions compare with known labels (backtests and evaluations alike)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metrics:
    precision: float
    recall: float
    f1: float


def metrics(tp: int, fp: int, fn: int) -> Metrics:
    """0.0 where a ratio is undefined (nothing flagged, or no fraud to find)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return Metrics(precision, recall, harmonic(precision, recall))


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0
