"""The parts of the built-in kinds (:mod:`caloforge.kinds`) that are named lazily there: file
tests, writers, piece codecs, ``caloforge info`` rows and jet conditions files.

Each function is one kind's own: nothing here compares kind names. h5py and the file modules
are imported when a function runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "decode_jets",
    "decode_points",
    "decode_voxels",
    "encode_jets",
    "encode_points",
    "encode_voxels",
    "is_point_file",
    "is_voxel_file",
    "jet_conditions",
    "jet_rows",
    "jet_writer",
    "point_rows",
    "point_writer",
    "voxel_rows",
    "voxel_writer",
]


# -- file tests: the layouts the shower reader (caloforge.io.ShowerReader) tells apart --------


def _has(path: str | Path, *names: str) -> bool | None:
    """Whether the HDF5 file ``path`` has every one of ``names``; ``None`` if it is no HDF5 file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return all(name in f for name in names)
    except (OSError, ValueError):
        return None


def is_point_file(path: str | Path) -> bool:
    """A point-cloud shower file: ``events`` and ``energy``."""
    return bool(_has(path, "events", "energy"))


def is_voxel_file(path: str | Path) -> bool:
    """A voxel shower file: ``showers`` and ``incident_energies`` (and not the point layout,
    which the shower reader takes first)."""
    return bool(_has(path, "showers", "incident_energies")) and not is_point_file(path)


# -- writers --------------------------------------------------------------------------------


def point_writer(path: str | Path, detector: Any, first: Any, **options: Any) -> Any:
    """A :class:`~caloforge.io.ShowerWriter` of point clouds."""
    from caloforge.io import ShowerWriter

    return ShowerWriter(path, "points", detector, **options)


def voxel_writer(path: str | Path, detector: Any, first: Any, **options: Any) -> Any:
    """A :class:`~caloforge.io.ShowerWriter` of voxels."""
    from caloforge.io import ShowerWriter

    return ShowerWriter(path, "voxels", detector, **options)


def jet_writer(path: str | Path, detector: Any, first: Any, **options: Any) -> Any:
    """A :class:`~caloforge.jets.io.JetWriter` for jets like ``first`` (its particle count and
    type); jets have no detector."""
    from caloforge.jets.io import JetWriter

    return JetWriter(path, first.n_particles, first.jet_type, **options)


# -- piece codecs (Dask pieces, kept on disk by caloforge.pieces) -----------------------------


def encode_points(showers: Any) -> dict[str, np.ndarray]:
    """Points without their padding (a third of the bytes to send and store), in slot order."""
    mask = showers.mask
    return {
        "energy": showers.energy, "data": showers.points[mask],
        "slots": np.nonzero(mask)[1].astype(np.int32), "counts": mask.sum(axis=1),
    }  # fmt: skip


def decode_points(arrays: Mapping[str, np.ndarray]) -> Any:
    """The :class:`~caloforge.io.PointShowers` of :func:`encode_points`."""
    from caloforge.io import PointShowers

    counts, slots = arrays["counts"], arrays["slots"]
    points = np.zeros((len(counts), int(slots.max()) + 1 if len(slots) else 1, 4), np.float32)
    points[np.repeat(np.arange(len(counts)), counts), slots] = arrays["data"]
    return PointShowers(arrays["energy"], points)


def encode_voxels(showers: Any) -> dict[str, np.ndarray]:
    """Voxels as they are."""
    return {"energy": showers.energy, "data": showers.voxels}


def decode_voxels(arrays: Mapping[str, np.ndarray]) -> Any:
    """The :class:`~caloforge.io.VoxelShowers` of :func:`encode_voxels`."""
    from caloforge.io import VoxelShowers

    return VoxelShowers(arrays["energy"], arrays["data"])


def encode_jets(jets: Any) -> dict[str, np.ndarray]:
    """Particles, jet features and the jet type."""
    return {"particles": jets.particles, "jet": jets.jet, "type": np.asarray(jets.jet_type)}


def decode_jets(arrays: Mapping[str, np.ndarray]) -> Any:
    """The :class:`~caloforge.jets.io.Jets` of :func:`encode_jets`."""
    from caloforge.jets.io import Jets

    return Jets(arrays["particles"], arrays["jet"], str(arrays["type"]))


# -- caloforge info ------------------------------------------------------------------------


def _spread(values: np.ndarray) -> str:
    return f"mean {values.mean():.1f}, std {values.std():.1f}, min {values.min()}, max {values.max()}"


def _shower_rows(
    path: str | Path, detector: str | None, count: Any, label: str, slots: bool = False
) -> Iterable[tuple[str, str]]:
    """Rows of a shower file; ``count(chunk)`` per shower is summarised as ``label``; with
    ``slots``, the point slots on disk."""
    from caloforge.io import open_showers

    with open_showers(path, detector) as reader:
        energy = reader.read_energy()
        yield "kind", reader.kind
        yield "showers", f"{len(reader):,}"
        yield "detector", reader.detector.name
        yield "generator", reader.generator
        for key in ("seed", "physics", "particle", "format_version"):
            if key in reader.attrs:
                yield key, str(reader.attrs[key])
        if len(energy):
            yield "incident energy", f"{energy.min():.2f} – {energy.max():.2f} GeV (mean {energy.mean():.2f})"
        counts = [count(chunk) for chunk in reader.iter_chunks(5000)]
        if counts:
            yield label, _spread(np.concatenate(counts))
        if slots:
            yield "point slots on disk", str(reader.max_points)


def point_rows(path: str | Path, detector: str | None = None) -> list[tuple[str, str]]:
    """``caloforge info`` of a point-cloud file (points per shower, the slots on disk)."""
    return list(_shower_rows(path, detector, lambda chunk: chunk.n_points, "points/shower", slots=True))


def voxel_rows(path: str | Path, detector: str | None = None) -> list[tuple[str, str]]:
    """``caloforge info`` of a voxel file (non-zero voxels per shower)."""
    return list(
        _shower_rows(path, detector, lambda chunk: (chunk.voxels > 0).sum(axis=1), "non-zero voxels/shower")
    )


def jet_rows(path: str | Path, detector: str | None = None) -> list[tuple[str, str]]:
    """``caloforge info`` of a jet file (``detector`` does not apply)."""
    from caloforge.io import ShowerFileError
    from caloforge.jets.io import read_jets

    jets = read_jets(path)
    if len(jets) == 0:
        raise ShowerFileError(f"'{path}' holds no jets")
    rows = [
        ("kind", f"jets ({jets.jet_type})"),
        ("jets", f"{len(jets):,}"),
        ("particles stored", f"{jets.n_particles} per jet"),
        ("generator", str(jets.attrs.get("generator", "unknown (a JetNet file?)"))),
    ]
    rows += [(key, str(jets.attrs[key])) for key in ("seed", "process", "jet_algorithm", "generator_versions")
             if key in jets.attrs]  # fmt: skip
    for i, (name, unit) in enumerate((("jet pT", " GeV"), ("jet eta", ""), ("jet mass", " GeV"))):
        v = jets.jet[:, i]
        rows.append((name, f"{v.min():.4g} – {v.max():.4g}{unit} (mean {v.mean():.4g})"))
    rows.append(("particles/jet", _spread(jets.multiplicity)))
    return rows


# -- conditions files --------------------------------------------------------------------------


def jet_conditions(path: str | Path, conditions: Sequence[Any], n: int | None) -> dict[str, np.ndarray]:
    """The ``conditions`` (a generator's :class:`~caloforge.models.protocol.Condition` s) of the
    first ``n`` jets of the jet file ``path``: their jet features, at most the model's particle
    count (a 150-particle file gives conditions for 30-particle jets)."""
    from caloforge.jets.io import JET_FEATURES, jet_file_info, read_jets

    cap = next((int(c.high) for c in conditions if c.name == "num_particles"), None)
    stored = jet_file_info(path)["n_particles"]
    jets = read_jets(path, n_particles=min(cap or stored, stored), stop=n)
    if n is not None and n > len(jets):
        raise ValueError(f"-n {n} asks for more jets than --conditions-file '{path}' holds ({len(jets)})")
    table = {name: jets.jet[:, i].astype(np.float64) for i, name in enumerate(JET_FEATURES)}
    return {c.name: table[c.name] for c in conditions}
