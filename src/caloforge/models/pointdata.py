"""Training data of the point-cloud families (CaloClouds, CaloClouds II): per-shower summaries
of a whole file and a random subsample of each shower's points, in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from caloforge.calibrate import count_hits
from caloforge.detector import Detector
from caloforge.io import PointShowers, open_showers
from caloforge.models._training import Progress
from caloforge.models.nn.showerflow import (
    ShowerStats,
    shower_stats,
)

__all__ = ["PointDataConfig", "TrainingData", "load_training_data"]


class PointDataConfig(Protocol):
    """The run settings :func:`load_training_data` reads."""

    seed: int
    max_showers: int | None
    chunk_size: int
    cache_points: int


@dataclass
class TrainingData:
    detector: Detector
    energy: Tensor  # (n,) GeV
    stats: ShowerStats
    hits: np.ndarray  # (n,) cell hits above threshold (Geant4), for the N calibration
    points: Tensor  # (n, cache_points, 4) random subset of each shower's points, zero-padded
    path: str
    energy_range: tuple[float, float]  # GeV


def load_training_data(
    data_path: Path, config: PointDataConfig, progress: Progress | None, model: str = "CaloClouds II"
) -> TrainingData:
    """Stream the file once: summaries of every shower and a point subsample (seeded)."""
    rng = np.random.default_rng(config.seed)
    energies, stats, hits, points = [], [], [], []
    with open_showers(data_path) as reader:
        if reader.kind != "points":
            raise ValueError(f"'{data_path}' holds {reader.kind}; {model} trains on point clouds")
        detector = reader.detector
        # The generated spectrum (caloforge files record it) can be a little wider than the sample.
        spectrum = (reader.attrs.get("energy_min_gev"), reader.attrs.get("energy_max_gev"))
        total = len(reader) if config.max_showers is None else min(len(reader), config.max_showers)
        done = 0
        for chunk in reader.iter_chunks(config.chunk_size, stop=total):
            done += len(chunk)
            chunk = chunk[chunk.n_points > 0]
            if len(chunk):
                energies.append(chunk.energy)
                stats.append(shower_stats(chunk, detector.n_layers))
                hits.append(count_hits(chunk, detector))
                points.append(_subsample(chunk, config.cache_points, rng))
            if progress is not None:
                progress("load", done, total)
    if not energies:
        raise ValueError(f"'{data_path}' holds no showers with points to train on")
    energy = np.concatenate(energies)
    lo, hi = float(energy.min()), float(energy.max())
    if isinstance(spectrum[0], (int, float)) and isinstance(spectrum[1], (int, float)):
        lo, hi = min(lo, float(spectrum[0])), max(hi, float(spectrum[1]))
    return TrainingData(
        detector=detector,
        energy=torch.from_numpy(energy.astype(np.float32)),
        stats=ShowerStats.concatenate(stats),
        hits=np.concatenate(hits),
        points=torch.from_numpy(np.concatenate(points)),
        path=str(data_path),
        energy_range=(lo, hi),
    )


def _subsample(showers: PointShowers, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` random real points per shower, ``(n, k, 4)`` with zero padding."""
    mask = showers.mask
    keys = np.where(mask, rng.random(mask.shape), 2.0)  # padding sorts last
    take = np.argsort(keys, axis=1)[:, :k]
    out = np.take_along_axis(showers.points, take[..., None], axis=1)
    out[~np.take_along_axis(mask, take, axis=1)] = 0.0
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1]), (0, 0)))
    return out.astype(np.float32)
