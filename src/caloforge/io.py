"""Shower files: point clouds and voxels in HDF5, read and written in chunks, written atomically.

In memory caloforge uses one convention for every file it reads:

* :class:`PointShowers` — ``points`` of shape ``(n, P, 4)`` float32 with columns
  ``x [mm], y [mm], layer coordinate, E [MeV]`` (layer ``l`` spans ``[l, l + 1)``; ``x``,
  ``y`` transverse, relative to the shower axis); ``E == 0`` marks a padding slot, wherever it is.
* :class:`VoxelShowers` — ``voxels`` of shape ``(n, n_voxels)`` in MeV: polar voxels, or a
  cell image for a cell-grid detector (``ild-ecal-30``: ``reshape(n, 30, 30, 30)`` is
  ``[shower, layer, x, y]``, :func:`caloforge.projection.voxelise_with_loss`).
* ``energy`` — the incident energy in GeV, shape ``(n,)``.

On disk the point-cloud layout is the one of the public CaloClouds II files: dataset
``events`` float32 ``(N, 4, P)`` = ``[x mm, depth (layer coordinate), y mm, E GeV]`` and
``energy`` ``(N, 1)`` in GeV; files storing ``(N, P, 4)`` (CaloClouds3) are read too. The
voxel layout is the CaloChallenge one: ``showers`` ``(N, n_voxels)`` and ``incident_energies``
``(N, 1)``, both in MeV (float64 on a polar readout, as the challenge's files; float32 on a
cell grid). caloforge adds root attributes (see :data:`DEFAULT_ATTRS` for what a
file without them is taken to contain).

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "demo.h5"
>>> pts = np.zeros((2, 3, 4), np.float32); pts[:, 0] = [1.0, -2.0, 4.5, 0.7]
>>> write_showers(path, PointShowers(np.array([10.0, 20.0]), pts), detector="ild-ecal")
>>> with open_showers(path) as f:
...     len(f), f.kind, f.read().points[1, 0].tolist()
(2, 'points', [1.0, -2.0, 4.5, 0.699999988079071])
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import h5py
import numpy as np

from caloforge import __version__
from caloforge.atomic import AtomicH5, atomic_output, atomic_write_text
from caloforge.detector import CellGrid, Detector, DetectorError, PolarGrid, detector_from_dict, get_detector

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_ATTRS",
    "FORMAT_VERSION",
    "MAX_INCIDENT_GEV",
    "PointShowers",
    "ShowerFileError",
    "ShowerReader",
    "ShowerWriter",
    "VoxelShowers",
    "atomic_output",  # re-exported from caloforge.atomic
    "atomic_write_text",  # re-exported from caloforge.atomic
    "open_showers",
    "read_showers",
    "write_showers",
]

FORMAT_VERSION = "1.0"

#: Highest incident energy a file may hold (100 TeV): anything above is a unit error or garbage.
MAX_INCIDENT_GEV = 1e5
#: Largest magnitude of any stored coordinate (mm) or deposit (MeV): 100 km, 100 TeV.
MAX_VALUE = 1e8

#: What a file without caloforge attributes is taken to contain.
DEFAULT_ATTRS: dict[str, Any] = {
    "points": {
        "detector": "ild-ecal",
        "depth_unit": "layer",  # or "mm": then mapped to the nearest active layer
        "energy_unit": "GeV",  # of the point energies and of `energy`
        "generator": "unknown",
    },
    "voxels": {
        "detector": "calochallenge-ds2",
        "energy_unit": "MeV",  # of the voxel energies and of `incident_energies`
        "generator": "unknown",
    },
}

_UNIT_TO_MEV = {"MeV": 1.0, "GeV": 1000.0, "keV": 1e-3}
#: The built-in detector a voxel file without a ``detector`` attribute is taken to be on, by its
#: number of voxels per shower (CaloChallenge datasets 2 and 3; the 30 × 30 × 30 ILD images).
_DETECTOR_BY_VOXELS = {6480: "calochallenge-ds2", 40500: "calochallenge-ds3", 27000: "ild-ecal-30"}

ShowerKind = Literal["points", "voxels"]


class ShowerFileError(ValueError):
    """A shower file is missing, unreadable, or not laid out as expected."""


@dataclass
class PointShowers:
    """A batch of point-cloud showers (see the module docstring for the conventions)."""

    energy: np.ndarray
    points: np.ndarray

    def __post_init__(self) -> None:
        self.energy = np.asarray(self.energy, dtype=np.float64).reshape(-1)
        self.points = np.asarray(self.points, dtype=np.float32)
        if self.points.ndim != 3 or self.points.shape[2] != 4:
            raise ShowerFileError(f"points must have shape (n, P, 4), got {self.points.shape}")
        if len(self.energy) != len(self.points):
            raise ShowerFileError(f"{len(self.energy)} incident energies for {len(self.points)} showers")

    kind: ClassVar[str] = "points"

    def __len__(self) -> int:
        return len(self.energy)

    def __getitem__(self, index: slice | np.ndarray) -> PointShowers:
        return PointShowers(self.energy[index], self.points[index])

    @property
    def mask(self) -> np.ndarray:
        """``(n, P)`` boolean: which slots hold a point."""
        return self.points[..., 3] != 0

    @property
    def n_points(self) -> np.ndarray:
        """Number of points in each shower."""
        return self.mask.sum(axis=1)

    @classmethod
    def from_list(cls, energy: np.ndarray, clouds: list[np.ndarray]) -> PointShowers:
        """Pad a list of ``(k_i, 4)`` clouds into one batch."""
        width = max((len(c) for c in clouds), default=0)
        points = np.zeros((len(clouds), max(width, 1), 4), np.float32)
        for i, cloud in enumerate(clouds):
            points[i, : len(cloud)] = cloud
        return cls(np.asarray(energy), points)

    @classmethod
    def concatenate(cls, batches: list[PointShowers]) -> PointShowers:
        """Join batches, padding to the widest."""
        width = max(b.points.shape[1] for b in batches)
        padded = [np.pad(b.points, ((0, 0), (0, width - b.points.shape[1]), (0, 0))) for b in batches]
        return cls(np.concatenate([b.energy for b in batches]), np.concatenate(padded))


@dataclass
class VoxelShowers:
    """A batch of voxelised showers: ``voxels`` ``(n, n_voxels)`` in MeV, ``energy`` in GeV."""

    energy: np.ndarray
    voxels: np.ndarray

    def __post_init__(self) -> None:
        self.energy = np.asarray(self.energy, dtype=np.float64).reshape(-1)
        self.voxels = np.asarray(self.voxels, dtype=np.float32)
        if self.voxels.ndim != 2:
            raise ShowerFileError(f"voxels must have shape (n, n_voxels), got {self.voxels.shape}")
        if len(self.energy) != len(self.voxels):
            raise ShowerFileError(f"{len(self.energy)} incident energies for {len(self.voxels)} showers")

    kind: ClassVar[str] = "voxels"

    def __len__(self) -> int:
        return len(self.energy)

    def __getitem__(self, index: slice | np.ndarray) -> VoxelShowers:
        return VoxelShowers(self.energy[index], self.voxels[index])

    @classmethod
    def concatenate(cls, batches: list[VoxelShowers]) -> VoxelShowers:
        """Join batches."""
        return cls(np.concatenate([b.energy for b in batches]), np.concatenate([b.voxels for b in batches]))


Showers = PointShowers | VoxelShowers


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ShowerReader:
    """An open shower file; reads slices or chunks without loading the whole file.

    Use :func:`open_showers` to get one. ``attrs`` holds the file's attributes with the
    defaults of :data:`DEFAULT_ATTRS` filled in for any that are missing.
    """

    def __init__(self, path: str | Path, detector: str | Path | Detector | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ShowerFileError(f"'{self.path}' does not exist")
        if self.path.is_dir():
            raise ShowerFileError(f"'{self.path}' is a directory, not a shower file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise ShowerFileError(
                f"'{self.path}' is not a readable HDF5 file (corrupt or truncated?): {exc}"
            ) from exc
        try:
            self._inspect(detector)
        except BaseException:
            self._h5.close()
            raise

    def _inspect(self, detector: str | Path | Detector | None) -> None:
        h5 = self._h5
        if "events" in h5 and "energy" in h5:
            self.kind: ShowerKind = "points"
            data, energy = h5["events"], h5["energy"]
        elif "showers" in h5 and "incident_energies" in h5:
            self.kind = "voxels"
            data, energy = h5["showers"], h5["incident_energies"]
        else:
            raise ShowerFileError(
                f"'{self.path}' holds neither 'events' + 'energy' (point clouds) nor "
                f"'showers' + 'incident_energies' (voxels); it has: {', '.join(h5) or 'nothing'}"
            )
        if not isinstance(data, h5py.Dataset) or not isinstance(energy, h5py.Dataset):
            raise ShowerFileError(f"'{self.path}': shower data must be HDF5 datasets, not groups")
        self._data, self._energy = data, energy
        attrs = dict(DEFAULT_ATTRS[self.kind])
        attrs.update({k: _decode(v) for k, v in h5.attrs.items()})
        self.attrs = attrs
        n = data.shape[0] if data.ndim else 0
        if energy.shape not in ((n,), (n, 1)):
            raise ShowerFileError(
                f"'{self.path}': incident energies have shape {energy.shape}, expected ({n}, 1) "
                f"to match {n} showers"
            )
        if self.kind == "points":
            if data.ndim != 3 or 4 not in data.shape[1:]:
                raise ShowerFileError(
                    f"'{self.path}': 'events' has shape {data.shape}, expected (N, 4, P) or (N, P, 4)"
                )
            layout = attrs.get("layout")
            if layout is None:
                layout = "N4P" if data.shape[1] == 4 else "NP4"
            if layout not in ("N4P", "NP4"):
                raise ShowerFileError(f"'{self.path}': attribute layout={layout!r} is not N4P or NP4")
            self._layout = layout
            self.max_points = data.shape[2] if layout == "N4P" else data.shape[1]
        elif data.ndim != 2:
            raise ShowerFileError(f"'{self.path}': 'showers' has shape {data.shape}, expected (N, n_voxels)")
        for key in ("energy_unit",):
            if attrs[key] not in _UNIT_TO_MEV:
                raise ShowerFileError(f"'{self.path}': unknown {key} {attrs[key]!r} (use MeV, GeV or keV)")
        if self.kind == "voxels" and "detector" not in h5.attrs and detector is None:
            # A CaloChallenge-layout file without attributes: its voxel count names the grid.
            attrs["detector"] = _DETECTOR_BY_VOXELS.get(data.shape[1], attrs["detector"])
        self.detector = self._resolve_detector(detector)
        if self.kind == "voxels" and data.shape[1] != self.detector.n_channels:
            det = self.detector
            grid = (
                f" ({det.n_layers} layers × {det.readout.n_cells} × {det.readout.n_cells} cells)"
                if isinstance(det.readout, CellGrid)
                else ""
            )
            raise ShowerFileError(
                f"'{self.path}': {data.shape[1]} voxels per shower but detector "
                f"'{det.name}' has {det.n_channels}{grid}; pass the right detector, or convert the "
                "point file again onto this grid (caloforge convert)"
            )

    def _resolve_detector(self, detector: str | Path | Detector | None) -> Detector:
        try:
            if detector is not None:
                return get_detector(detector)
            if "detector_json" in self.attrs:
                try:
                    described = json.loads(self.attrs["detector_json"])
                except (TypeError, ValueError) as exc:
                    raise DetectorError(
                        f"attribute 'detector_json' is not valid JSON ({exc}); write the file again "
                        "or name its detector explicitly (--detector, where the command has it)"
                    ) from None
                if not isinstance(described, dict):
                    raise DetectorError("attribute 'detector_json' does not describe a detector")
                return detector_from_dict(described)
            return get_detector(self.attrs["detector"])
        except DetectorError as exc:
            raise ShowerFileError(f"'{self.path}': {exc}") from exc

    def __len__(self) -> int:
        return int(self._data.shape[0])

    def __enter__(self) -> ShowerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HDF5 file."""
        self._h5.close()

    @property
    def generator(self) -> str:
        """Who made the showers (``geant4``, a model name, or ``unknown``)."""
        return str(self.attrs.get("generator", "unknown"))

    def read_energy(self) -> np.ndarray:
        """All incident energies in GeV (small: one number per shower), checked like :meth:`read`."""
        scale = _UNIT_TO_MEV[self.attrs["energy_unit"]] / 1000.0
        energy = np.asarray(self._energy[...], np.float64).reshape(-1) * scale
        self._check_energy(energy, 0)
        return energy

    def _energy_name(self) -> str:
        return "energy" if self.kind == "points" else "incident_energies"

    def _refuse(self, dataset: str, index: int, what: str) -> ShowerFileError:
        return ShowerFileError(
            f"'{self.path}': dataset '{dataset}', shower {index}: {what}; fix or remove that "
            "shower (caloforge never trains, generates or evaluates on such values)"
        )

    def _check_energy(self, energy: np.ndarray, start: int) -> None:
        bad = ~(np.isfinite(energy) & (energy > 0) & (energy <= MAX_INCIDENT_GEV))
        if bad.any():
            i = int(np.argmax(bad))
            raise self._refuse(
                self._energy_name(),
                start + i,
                f"incident energy {energy[i]:g} GeV is not a finite energy in (0, {MAX_INCIDENT_GEV:g}] GeV",
            )

    def _check_deposits(self, values: np.ndarray, energies: np.ndarray, start: int) -> None:
        """Non-finite coordinates or energies, negative energies and absurd magnitudes (beyond
        1e8 mm or MeV, :data:`MAX_VALUE`) are refused."""
        sane = np.isfinite(values) & (np.abs(values) <= MAX_VALUE)
        finite = sane.reshape(len(values), -1).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            raise self._refuse(
                self._data.name.lstrip("/"),
                start + i,
                f"holds a non-finite value (nan or inf) or one beyond {MAX_VALUE:g}",
            )
        negative = (energies < 0).reshape(len(energies), -1).any(axis=1)
        if negative.any():
            i = int(np.argmax(negative))
            raise self._refuse(self._data.name.lstrip("/"), start + i, "holds a negative energy deposit")

    def read(self, start: int = 0, stop: int | None = None) -> Showers:
        """Showers ``start:stop`` (all by default) in the in-memory convention."""
        n = len(self)
        stop = n if stop is None else min(stop, n)
        start = max(0, min(start, stop))
        try:
            energy = np.asarray(self._energy[start:stop], np.float64).reshape(-1)
            raw = np.asarray(self._data[start:stop], np.float32)
        except (OSError, ValueError) as exc:
            raise ShowerFileError(
                f"'{self.path}': cannot read showers {start}-{stop} (file corrupt or truncated?): {exc}"
            ) from exc
        to_mev = _UNIT_TO_MEV[self.attrs["energy_unit"]]
        energy = energy * to_mev / 1000.0
        self._check_energy(energy, start)
        if self.kind == "voxels":
            self._check_deposits(raw, raw, start)
            return VoxelShowers(energy, raw * to_mev if to_mev != 1.0 else raw)
        self._check_deposits(raw, raw[:, 3] if self._layout == "N4P" else raw[..., 3], start)
        return PointShowers(energy, self._points_from_disk(raw, to_mev))

    def _points_from_disk(self, raw: np.ndarray, to_mev: float) -> np.ndarray:
        if self._layout == "N4P":
            raw = raw.transpose(0, 2, 1)
        # Disk order is [x, depth, y, E]; memory order is [x, y, layer, E].
        points = np.ascontiguousarray(raw[..., [0, 2, 1, 3]])
        points[..., 3] *= to_mev
        if self.attrs["depth_unit"] == "mm":
            filled = points[..., 3] != 0
            points[..., 2] = np.where(filled, self.detector.layer_of_depth(points[..., 2]) + 0.5, 0.0)
        elif self.attrs["depth_unit"] != "layer":
            raise ShowerFileError(f"'{self.path}': depth_unit must be 'layer' or 'mm'")
        used = np.flatnonzero((points[..., 3] != 0).any(axis=0))
        # Drop slots empty in every shower of this chunk (front-padded files keep their order).
        if len(used) == 0:
            return points[:, :1] * 0
        return points[:, used[0] : used[-1] + 1]

    def iter_chunks(
        self, chunk_size: int = 1000, start: int = 0, stop: int | None = None
    ) -> Iterator[Showers]:
        """Yield consecutive batches of at most ``chunk_size`` showers."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        stop = len(self) if stop is None else min(stop, len(self))
        for lo in range(start, stop, chunk_size):
            yield self.read(lo, min(lo + chunk_size, stop))


def open_showers(path: str | Path, detector: str | Path | Detector | None = None) -> ShowerReader:
    """Open a point-cloud or voxel shower file; ``detector`` overrides the file's own."""
    return ShowerReader(path, detector)


def read_showers(path: str | Path, start: int = 0, stop: int | None = None) -> Showers:
    """Read showers ``start:stop`` of a file into memory."""
    with open_showers(path) as reader:
        return reader.read(start, stop)


#: File compressions of :class:`ShowerWriter` (``compression``; ``none`` is ``None`` there):
#: shuffle + gzip level 1 (readable everywhere), shuffle + lzf (2.6x faster to write, 9 % larger
#: files, a filter h5py ships but plain HDF5 tools need as a plugin), or none.
COMPRESSIONS = ("gzip", "lzf", "none")


class ShowerWriter:
    """Write showers to ``path`` atomically, in chunks.

    Data go to a temporary file next to ``path``, renamed onto ``path`` only by
    :meth:`commit` (called when the ``with`` block ends normally). An error discards the
    temporary file and leaves any existing ``path`` untouched; so does Ctrl-C, and so does a
    full disk (:class:`~caloforge.atomic.DiskFullError`, checked before each write and, with
    ``expected`` showers, for the rest of the file too: :class:`~caloforge.atomic.AtomicH5`).
    With ``append``, an existing file at ``path`` is copied and extended (its attributes must
    agree).
    """

    def __init__(
        self,
        path: str | Path,
        kind: ShowerKind,
        detector: str | Path | Detector = "ild-ecal",
        *,
        generator: str = "unknown",
        seed: int | None = None,
        attrs: Mapping[str, Any] | None = None,
        append: bool = False,
        compression: str | None = "gzip",
        expected: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.detector = get_detector(detector)
        if compression not in ("gzip", "lzf", None):
            raise ShowerFileError(f"unknown compression '{compression}': use gzip, lzf or None")
        self._compression = compression
        self._pending: list[Any] = []
        self._pending_n = 0
        # Polar voxel files in the CaloChallenge layout are float64, as the challenge's own files
        # and tools (its evaluate.py computes in float64 and refuses float32 input): 15 % larger
        # than float32 after compression (docs/formats.md).
        polar = kind == "voxels" and isinstance(self.detector.readout, PolarGrid)
        self._dtype = np.dtype(np.float64 if polar else np.float32)
        if append and self.path.exists():
            self._check_append()
            self._file = AtomicH5.copy_of(self.path, expected)
        else:
            self._file = AtomicH5(self.path, expected)
        self._h5 = self._file.h5
        try:
            if not append or "format" not in self._h5.attrs:
                meta = {
                    "format": f"caloforge-{kind}",
                    "format_version": FORMAT_VERSION,
                    "caloforge_version": __version__,
                    "detector": self.detector.name,
                    "detector_json": json.dumps(self.detector.to_dict()),
                    "generator": generator,
                    "energy_unit": "GeV" if kind == "points" else "MeV",
                }
                if kind == "voxels" and isinstance(self.detector.readout, CellGrid):
                    n_cells = self.detector.readout.n_cells
                    meta |= {
                        "image_shape": [self.detector.n_layers, n_cells, n_cells],
                        "voxel_order": "layer,x,y",
                        "cell_size_mm": self.detector.readout.cell_size_mm,
                    }
                if kind == "points":
                    meta |= {
                        "layout": "N4P",
                        "depth_unit": "layer",
                        "axes": "x,depth,y,E",
                        "length_unit": "mm",
                        "padding": "back",
                    }
                if seed is not None:
                    meta["seed"] = int(seed)
                meta |= dict(attrs or {})
                for key, value in meta.items():
                    self._h5.attrs[key] = value
        except BaseException:
            self._file.abort()
            raise
        self._closed = False

    def _check_append(self) -> None:
        with open_showers(self.path) as existing:
            if existing.kind != self.kind:
                raise ShowerFileError(
                    f"cannot append {self.kind} to '{self.path}', which holds {existing.kind}"
                )
            if existing.attrs.get("format") != f"caloforge-{self.kind}":
                raise ShowerFileError(f"cannot append to '{self.path}': not written by caloforge")

    @property
    def n_written(self) -> int:
        """Showers written so far (including those of an appended file)."""
        key = "events" if self.kind == "points" else "showers"
        return (int(self._h5[key].shape[0]) if key in self._h5 else 0) + self._pending_n

    #: Showers held in memory before they go to the file: appending a few showers at a time
    #: would recompress the same HDF5 chunks (64 showers) over and over.
    BUFFER_SHOWERS = 64

    def write(self, batch: Showers) -> None:
        """Append a batch of showers (buffered up to :attr:`BUFFER_SHOWERS`; all of them are in
        the file after :meth:`commit`)."""
        if batch.kind != self.kind:
            raise ShowerFileError(f"cannot write {batch.kind} into a {self.kind} file")
        if isinstance(batch, VoxelShowers) and batch.voxels.shape[1] != self.detector.n_channels:
            raise ShowerFileError(
                f"{batch.voxels.shape[1]} voxels per shower, detector '{self.detector.name}' "
                f"has {self.detector.n_channels}"
            )
        if len(batch) == 0:
            return
        self._pending.append(batch)
        self._pending_n += len(batch)
        if self._pending_n >= self.BUFFER_SHOWERS:
            self._flush_pending()

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        batches, self._pending, self._pending_n = self._pending, [], 0
        batch = batches[0] if len(batches) == 1 else type(batches[0]).concatenate(batches)  # type: ignore[arg-type]
        data = batch.points if isinstance(batch, PointShowers) else batch.voxels
        with self._file.writing((data.size + len(batch)) * self._dtype.itemsize, len(batch)):
            if isinstance(batch, PointShowers):
                # Memory [x, y, layer, E MeV] -> disk [x, depth, y, E GeV], (n, 4, P).
                disk = batch.points[..., [0, 2, 1, 3]].transpose(0, 2, 1).copy()
                disk[:, 3] /= 1000.0
                self._append("events", disk, (None, 4, None))
                self._append("energy", batch.energy.reshape(-1, 1), (None, 1))
            else:
                self._append("showers", batch.voxels, (None, batch.voxels.shape[1]))
                self._append("incident_energies", batch.energy.reshape(-1, 1) * 1000.0, (None, 1))
            self._h5.flush()

    def _append(self, name: str, values: np.ndarray, maxshape: tuple[int | None, ...]) -> None:
        values = values.astype(self._dtype)
        if name not in self._h5:
            # Unlimited axes (showers, point slots) get fixed chunk lengths so later, wider
            # batches do not inherit the tiny chunks of a narrow first batch.
            chunks = tuple(
                (64 if i == 0 else 512) if m is None else s
                for i, (s, m) in enumerate(zip(values.shape, maxshape, strict=True))
            )
            ds = self._h5.create_dataset(
                name,
                data=values,
                maxshape=maxshape,
                chunks=chunks,
                compression=self._compression,
                compression_opts=1 if self._compression == "gzip" else None,
                shuffle=self._compression is not None,
            )
            ds.attrs.update(DATASET_UNITS[name])
            return
        ds = self._h5[name]
        n0 = ds.shape[0]
        new_shape = [n0 + len(values), *ds.shape[1:]]
        for axis in range(1, values.ndim):
            new_shape[axis] = max(new_shape[axis], values.shape[axis])
        ds.resize(new_shape)
        ds[(slice(n0, None), *(slice(0, s) for s in values.shape[1:]))] = values

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add or replace root attributes (a summary known only once the data are written)."""
        for key, value in attrs.items():
            self._h5.attrs[key] = value

    def commit(self) -> Path:
        """Close the temporary file, check it and move it onto ``path`` (on a failure the file is
        discarded and ``path`` left as it was)."""
        if not self._closed:
            try:
                self._flush_pending()
                n = self.n_written
                if n == 0:
                    # An empty file still has the datasets, so readers see "0 showers", not "no data".
                    if self.kind == "points":
                        self._append("events", np.zeros((0, 4, 1)), (None, 4, None))
                        self._append("energy", np.zeros((0, 1)), (None, 1))
                    else:
                        self._append("showers", np.zeros((0, self.detector.n_channels)), (None, None))
                        self._append("incident_energies", np.zeros((0, 1)), (None, 1))
                names = ("events", "energy") if self.kind == "points" else ("showers", "incident_energies")
            except BaseException:
                self.abort()
                raise
            self._closed = True
            self._file.commit(dict.fromkeys(names, n))
        return self.path

    def abort(self) -> None:
        """Discard everything written by this writer; ``path`` is left as it was."""
        if not self._closed:
            self._file.abort()
            self._closed = True

    def __enter__(self) -> ShowerWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


#: What each dataset of a shower file holds, as attributes of the dataset itself: its unit
#: (``units``) and, for the point layout, the meaning of each row of axis 1 (``axes``).
DATASET_UNITS: dict[str, dict[str, str]] = {
    "events": {"axes": "x,depth,y,E", "units": "mm,layer,mm,GeV"},
    "energy": {"units": "GeV"},
    "showers": {"units": "MeV"},
    "incident_energies": {"units": "MeV"},
}


def write_showers(
    path: str | Path,
    showers: Showers,
    detector: str | Path | Detector = "ild-ecal",
    **kwargs: Any,
) -> None:
    """Write one batch of showers to ``path`` atomically (see :class:`ShowerWriter`)."""
    with ShowerWriter(path, showers.kind, detector, **kwargs) as writer:
        writer.write(showers)
