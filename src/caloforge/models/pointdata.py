"""What the point-cloud families (CaloClouds, CaloClouds II) share in training: per-shower
summaries of a whole file and a random subsample of each shower's points, in memory
(:func:`load_training_data`), and the resumable state of a run (:class:`PointRunState`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from caloforge.calibrate import NPointsCalibration, count_hits
from caloforge.clustering import cluster_pitch_mm, coarsen_points
from caloforge.detector import Detector
from caloforge.io import PointShowers, open_showers
from caloforge.models._training import OnDevice, Progress
from caloforge.models.nn.pointwise import PointScaler, dequantize
from caloforge.models.nn.showerflow import (
    ShowerStats,
    shower_stats,
)
from caloforge.models.protocol import CheckpointError
from caloforge.models.rows import DiskRows, RowsWriter

__all__ = ["PointDataConfig", "PointRunState", "TrainingData", "fit_point_scaler", "load_training_data"]


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
    # (n, cache_points, 4) random subset of each shower's points, zero-padded; on disk
    # (rows[idx]) for a file too large for memory (caloforge.models.rows)
    points: Tensor | DiskRows
    path: str
    energy_range: tuple[float, float]  # GeV
    pitch_mm: float = 0.0  # clustering grid of the points (0: the detector's fine grid)

    @property
    def point_pitch_mm(self) -> float:
        """The side of the squares the points were clustered in: their dequantisation width."""
        return self.pitch_mm or self.detector.fine_cell_mm


def load_training_data(
    data_path: Path, config: PointDataConfig, progress: Progress | None, model: str = "CaloClouds II"
) -> TrainingData:
    """Stream the file once: summaries of every shower and a point subsample (seeded).

    A config with ``cluster_per_cell`` (CaloClouds II) set re-clusters each shower's points on
    that coarser grid first (:func:`~caloforge.clustering.coarsen_points`), so every
    summary (numbers of points, per-layer fractions) describes the coarser clouds.
    """
    per_cell = getattr(config, "cluster_per_cell", None)
    rng = np.random.default_rng(config.seed)
    energies, stats, hits = [], [], []
    with open_showers(data_path) as reader, contextlib.ExitStack() as stack:
        if reader.kind != "points":
            raise ValueError(f"'{data_path}' holds {reader.kind}; {model} trains on point clouds")
        detector = reader.detector
        pitch = cluster_pitch_mm(detector, per_cell)
        # The generated spectrum (caloforge files record it) can be a little wider than the sample.
        spectrum = (reader.attrs.get("energy_min_gev"), reader.attrs.get("energy_max_gev"))
        total = len(reader) if config.max_showers is None else min(len(reader), config.max_showers)
        what = f"points|{config.seed}|{per_cell}|{config.chunk_size}"  # what the subsample depends on
        points = stack.enter_context(RowsWriter(data_path, what, (config.cache_points, 4), total))
        done = 0
        for chunk in reader.iter_chunks(config.chunk_size, stop=total):
            done += len(chunk)
            chunk = chunk[chunk.n_points > 0]
            if per_cell is not None and len(chunk):
                chunk = coarsen_points(chunk, detector, per_cell)
            if len(chunk):
                energies.append(chunk.energy)
                stats.append(shower_stats(chunk, detector.n_layers))
                hits.append(count_hits(chunk, detector))
                points.append(_subsample(chunk, config.cache_points, rng))
            if progress is not None:
                progress("load", done, total)
        if not energies:
            raise ValueError(f"'{data_path}' holds no showers with points to train on")
        cached = points.finish()
    energy = np.concatenate(energies)
    lo, hi = float(energy.min()), float(energy.max())
    if isinstance(spectrum[0], (int, float)) and isinstance(spectrum[1], (int, float)):
        lo, hi = min(lo, float(spectrum[0])), max(hi, float(spectrum[1]))
    return TrainingData(
        detector=detector,
        energy=torch.from_numpy(energy.astype(np.float32)),
        stats=ShowerStats.concatenate(stats),
        hits=np.concatenate(hits),
        points=cached,
        path=str(data_path),
        energy_range=(lo, hi),
        pitch_mm=pitch,
    )


def fit_point_scaler(scaler: PointScaler, data: TrainingData, gen: torch.Generator) -> None:
    """Fit ``scaler`` to the dequantised cached points of ``data`` (noise from ``gen``): at once
    in memory, block by block when they are on disk."""
    if isinstance(data.points, Tensor):
        scaler.fit(dequantize(data.points, data.point_pitch_mm, gen), data.points[..., 3] > 0)
        return
    scaler.fit_blocks(
        (dequantize(block, data.point_pitch_mm, gen), block[..., 3] > 0) for block in data.points.blocks()
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


class PointRunState(OnDevice):
    """The checkpoint state of a point-cloud training run, for trainers with ``model`` (with
    ``metadata()``, ``calibration``, ``complete``), ``train_net`` and its ``ema``, the random
    streams ``gen`` (data) and ``noise_gen``, ``data`` (:class:`TrainingData`), ``step``,
    ``skipped``, ``elapsed_s`` and their optimisers by name (:meth:`optimizers`)."""

    model: Any
    train_net: Any
    ema: Any
    gen: Any
    noise_gen: Any
    data: TrainingData
    step: int
    skipped: int
    elapsed_s: float

    def optimizers(self) -> dict[str, Any]:
        """The run's optimisers by the name they have in a checkpoint."""
        raise NotImplementedError

    def device_modules(self) -> list[Any]:
        """The model (with its averaged net) and the live net."""
        return [self.model, self.train_net]

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs, with the model's metadata."""
        return self.model.metadata() | {
            "model": self.model.state_dict(),
            "train_net": self.train_net.state_dict(),
            "ema_num_updates": self.ema.num_updates,
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
            "rng": {"data": self.gen.get_state(), "noise": self.noise_gen.get_state()},
            "step": self.step,
            "skipped_steps": self.skipped,
            "elapsed_s": self.elapsed_s,
            "data": {"path": self.data.path, "n_showers": len(self.data.energy)},
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a checked ``state`` of the same data (:class:`CheckpointError` if not)."""
        n = len(self.data.energy)
        if state.get("data", {}).get("n_showers") != n:
            raise CheckpointError(
                f"'{path}' was trained on {state.get('data', {}).get('n_showers')} showers of "
                f"'{state.get('data', {}).get('path')}', this run has {n}: resume with the same data"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.train_net.load_state_dict(state["train_net"])
            self.ema.num_updates = int(state["ema_num_updates"])
            for name, opt in self.optimizers().items():
                opt.load_state_dict(state["optimizers"][name])
            self.gen.set_state(state["rng"]["data"])
            self.noise_gen.set_state(state["rng"]["noise"])
            self.step = int(state["step"])
            self.skipped = int(state["skipped_steps"])
            self.elapsed_s = float(state.get("elapsed_s", 0.0))
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"'{path}' cannot be resumed from: {exc}") from exc
        self.model.calibration = NPointsCalibration.from_dict(state["calibration"])
        self.model.complete = bool(state["complete"])
