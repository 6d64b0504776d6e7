"""Jet files: particle clouds of jets in the JetNet HDF5 layout, read in chunks, written atomically.

On disk (docs/formats.md, "Jet files"), as in JetNet's own files (``t.hdf5``, ``t150.hdf5``):

* ``particle_features`` float32 ``(N, P, 4)``: ``eta_rel, phi_rel, pt_rel, mask`` of the
  ``P`` leading constituents by pT (``eta_rel = eta - eta_jet``, ``phi_rel`` wrapped to
  ``(-pi, pi]``, ``pt_rel = pt / pt_jet``, ``mask`` 1 for a particle, 0 for padding, which
  comes last and is all zeros);
* ``jet_features`` float32 ``(N, 4)``: ``pt [GeV], eta, mass [GeV], num_particles`` (the
  particles stored, at most ``P``).

caloforge adds root attributes: ``format = "caloforge-jets"``, ``jet_type`` (``t``, ``g``,
``q``, …), ``generator``, ``seed``. A JetNet file has none: its jet type is read from its
name (``t.hdf5`` → ``t``), and any other file without one is refused.

>>> import tempfile, pathlib
>>> p = np.zeros((2, 3, 4), np.float32); p[:, :2] = [[0.1, -0.2, 0.6, 1.0], [-0.1, 0.1, 0.4, 1.0]]
>>> jets = Jets(p, np.array([[1000.0, 0.5, 170.0, 2.0]] * 2, np.float32), "t")
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.h5"
>>> write_jets(path, jets, generator="test")
>>> back = read_jets(path, n_particles=2)
>>> back.particles.shape, back.jet_type, back.multiplicity.tolist()
((2, 2, 4), 't', [2, 2])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from caloforge import __version__
from caloforge.atomic import AtomicH5
from caloforge.io import ShowerFileError

__all__ = [
    "JET_FEATURES",
    "JET_FORMAT",
    "JET_TYPES",
    "PARTICLE_FEATURES",
    "UNKNOWN_TYPE",
    "JetFileError",
    "JetWriter",
    "Jets",
    "is_jet_file",
    "jet_file_info",
    "read_jets",
    "write_jets",
]

#: Jet types: JetNet's five (top quark, gluon, light quark, W, Z); caloforge simulates t, g, q.
JET_TYPES = ("t", "g", "q", "w", "z")
#: The type of a jet file that says none (no attribute, no type in its name, no ``--jet-type``).
UNKNOWN_TYPE = "unknown"
PARTICLE_FEATURES = ("etarel", "phirel", "ptrel", "mask")
JET_FEATURES = ("pt", "eta", "mass", "num_particles")
JET_FORMAT = "caloforge-jets"


class JetFileError(ShowerFileError):
    """A jet file is missing, malformed or does not hold what was asked."""


@dataclass
class Jets:
    """Jets in memory: ``particles`` ``(n, P, 4)`` float32 (:data:`PARTICLE_FEATURES`),
    ``jet`` ``(n, 4)`` float32 (:data:`JET_FEATURES`), their ``jet_type`` and file attributes."""

    particles: np.ndarray
    jet: np.ndarray
    jet_type: str
    attrs: dict[str, Any] = field(default_factory=dict)
    kind = "jets"

    def __post_init__(self) -> None:
        self.particles = np.asarray(self.particles, np.float32)
        self.jet = np.asarray(self.jet, np.float32).reshape(-1, 4)
        if self.particles.ndim != 3 or self.particles.shape[2] != 4:
            raise JetFileError(f"particles must have shape (n, P, 4), got {self.particles.shape}")
        if len(self.jet) != len(self.particles):
            raise JetFileError(f"{len(self.particles)} particle clouds but {len(self.jet)} jet feature rows")

    def __len__(self) -> int:
        return len(self.particles)

    @property
    def n_particles(self) -> int:
        """``P``, the particle slots per jet."""
        return int(self.particles.shape[1])

    @property
    def mask(self) -> np.ndarray:
        """``(n, P)`` bool, True for a real particle."""
        return self.particles[..., 3] > 0.5

    @property
    def multiplicity(self) -> np.ndarray:
        """Particles per jet, ``(n,)`` int."""
        return self.mask.sum(axis=1)

    def __getitem__(self, index: Any) -> Jets:
        return Jets(self.particles[index], self.jet[index], self.jet_type, self.attrs)

    def truncated(self, n_particles: int) -> Jets:
        """The ``n_particles`` leading particles of every jet (``num_particles`` capped to match)."""
        if n_particles > self.n_particles:
            raise JetFileError(f"these jets hold {self.n_particles} particles each, not {n_particles}")
        jet = self.jet.copy()
        jet[:, 3] = np.minimum(jet[:, 3], n_particles)
        return Jets(self.particles[:, :n_particles], jet, self.jet_type, self.attrs)

    @classmethod
    def concatenate(cls, parts: Sequence[Jets]) -> Jets:
        """One :class:`Jets` of ``parts`` (same type and particle count) in order."""
        if not parts:
            raise JetFileError("no jets to concatenate")
        return cls(
            np.concatenate([p.particles for p in parts]),
            np.concatenate([p.jet for p in parts]),
            parts[0].jet_type,
            parts[0].attrs,
        )


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def is_jet_file(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file in the jet layout (a ``particle_features`` dataset)."""
    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("particle_features"), h5py.Dataset)
    except (OSError, ValueError):
        return False


#: Words of a file name that say its jet type (JetNet names its files t.hdf5, g150.hdf5, …).
_TYPE_WORDS = {"t": "t", "top": "t", "g": "g", "gluon": "g", "q": "q", "quark": "q", "w": "w", "z": "z"}


def _jet_type(path: Path, attrs: Mapping[str, Any], given: str | None = None) -> str:
    """The jet type of a file: its ``jet_type`` attribute, else the one type its name says
    (``t.hdf5``, ``g150.hdf5``, ``top_test.h5``), else ``given`` (``--jet-type``, for files that
    say nothing), else :data:`UNKNOWN_TYPE`.

    >>> _jet_type(Path("t150.hdf5"), {}), _jet_type(Path("jets_gluon-test.h5"), {}), _jet_type(Path("x"), {})
    ('t', 'g', 'unknown')
    """
    for where, value in (("jet_type", attrs.get("jet_type")), ("--jet-type", given)):
        if value is not None and str(value) not in JET_TYPES:
            raise JetFileError(f"'{path}': unknown {where} '{value}' (one of {', '.join(JET_TYPES)})")
    if "jet_type" in attrs:
        return str(attrs["jet_type"])
    words = {
        _TYPE_WORDS[w]
        for w in re.split(r"[^a-z0-9]+", re.sub(r"150$", "", path.stem.lower()))
        if w in _TYPE_WORDS
    }
    if len(words) == 1:
        return words.pop()
    return UNKNOWN_TYPE if given is None else str(given)


def jet_file_info(path: str | Path, jet_type: str | None = None) -> dict[str, Any]:
    """``n_jets``, ``n_particles``, ``jet_type`` and the attributes of a jet file, reading no data.

    The type is the file's ``jet_type`` attribute, else what its name says, else ``jet_type``,
    else :data:`UNKNOWN_TYPE` (JetNet's files carry no attribute; :func:`_jet_type`)."""
    path = Path(path)
    if not path.is_file():
        raise JetFileError(f"jet file '{path}' does not exist")
    try:
        with h5py.File(path, "r") as f:
            pf, jf = f.get("particle_features"), f.get("jet_features")
            if not isinstance(pf, h5py.Dataset) or not isinstance(jf, h5py.Dataset):
                raise JetFileError(
                    f"'{path}' is not a jet file: it needs the datasets particle_features and jet_features"
                )
            if pf.ndim != 3 or pf.shape[2] != 4:
                raise JetFileError(f"'{path}': particle_features must be (N, P, 4), got {pf.shape}")
            if jf.ndim != 2 or jf.shape[1] != 4 or jf.shape[0] != pf.shape[0]:
                raise JetFileError(f"'{path}': jet_features must be ({pf.shape[0]}, 4), got {jf.shape}")
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            return {
                "n_jets": int(pf.shape[0]),
                "n_particles": int(pf.shape[1]),
                "jet_type": _jet_type(path, attrs, jet_type),
                "attrs": attrs,
            }
    except OSError as exc:
        raise JetFileError(f"cannot read '{path}' as HDF5: {exc}") from None


def _check(path: Path, jets: Jets, offset: int) -> None:
    """One-line errors naming the jet: NaN or infinite values, masks that are not 0/1 or have
    gaps, negative pT (of particles or jets) or jet mass, empty jets, non-zero padding, a
    ``num_particles`` that is not the mask's count."""
    bad = ~np.isfinite(jets.particles).all(axis=(1, 2)) | ~np.isfinite(jets.jet).all(axis=1)
    if bad.any():
        raise JetFileError(f"'{path}': jet {offset + int(np.argmax(bad))} holds NaN or infinite values")
    mask = jets.particles[..., 3]
    if not np.isin(mask, (0.0, 1.0)).all():
        raise JetFileError(f"'{path}': the mask column (particle feature 4) must be 0 or 1")
    if (jets.particles[..., 2] < 0).any():
        raise JetFileError(f"'{path}': negative pt_rel values")
    count = mask.sum(axis=1)
    padding = (jets.particles[..., :3] != 0).any(axis=2) & (mask == 0)
    gaps = np.diff(mask, axis=1).max(axis=1, initial=0) > 0  # a real particle after padding
    problems = (
        (count == 0, "has no particles"),
        ((jets.jet[:, 0] < 0) | (jets.jet[:, 2] < 0), "has a negative pT or mass"),
        (gaps, "has gaps in its mask (real particles after padding)"),
        (padding.any(axis=1), "has non-zero padding"),
        (jets.jet[:, 3] != count, "has a num_particles that disagrees with its mask"),
    )
    for bad, what in problems:
        if bad.any():
            raise JetFileError(f"'{path}': jet {offset + int(np.argmax(bad))} {what}")


def read_jets(
    path: str | Path, n_particles: int | None = None, start: int = 0, stop: int | None = None
) -> Jets:
    """Jets ``start:stop`` of a jet file (ours or JetNet's), checked (:func:`_check`); with
    ``n_particles``, only the leading ``n_particles`` of each jet (the file must hold that many)."""
    path = Path(path)
    info = jet_file_info(path)
    if n_particles is not None and n_particles > info["n_particles"]:
        raise JetFileError(
            f"'{path}' holds {info['n_particles']} particles per jet; {n_particles} were asked for "
            f"(use a file with at least {n_particles})"
        )
    take = info["n_particles"] if n_particles is None else n_particles
    with h5py.File(path, "r") as f:
        particles = np.asarray(f["particle_features"][start:stop, :take], np.float32)
        jet = np.asarray(f["jet_features"][start:stop], np.float32)
    jets = Jets(particles, jet, info["jet_type"], info["attrs"])
    # JetNet's files count every constituent; the clouds hold the leading `take` (as jetnet reads them)
    jets.jet[:, 3] = np.minimum(jets.jet[:, 3], take)
    _check(path, jets, start)
    return jets


class JetWriter:
    """Write jets to ``path`` atomically, in chunks (a temporary file renamed by :meth:`commit`,
    which the ``with`` block calls when it ends normally; an error or Ctrl-C leaves an existing
    ``path`` untouched)."""

    def __init__(
        self,
        path: str | Path,
        n_particles: int,
        jet_type: str,
        *,
        generator: str = "unknown",
        seed: int | None = None,
        attrs: Mapping[str, Any] | None = None,
        compression: str | None = "gzip",
        expected: int | None = None,
    ) -> None:
        if jet_type not in JET_TYPES:
            raise JetFileError(f"unknown jet type '{jet_type}': use one of {', '.join(JET_TYPES)}")
        self.path = Path(path)
        self.n_particles = int(n_particles)
        self.jet_type = jet_type
        self._file = AtomicH5(self.path, expected)
        self._h5 = self._file.h5
        self._n = 0
        try:
            opts: dict[str, Any] = {"compression": compression, "shuffle": compression is not None}
            if compression == "gzip":
                opts["compression_opts"] = 1
            chunk = max(1, min(1024, 2**20 // (16 * self.n_particles)))
            self._pf = self._h5.create_dataset(
                "particle_features", (0, self.n_particles, 4), np.float32,
                maxshape=(None, self.n_particles, 4), chunks=(chunk, self.n_particles, 4), **opts,
            )  # fmt: skip
            self._jf = self._h5.create_dataset(
                "jet_features", (0, 4), np.float32, maxshape=(None, 4), chunks=(chunk, 4), **opts
            )
            # The units on the datasets themselves (relative coordinates: pt_rel = pT / pT_jet).
            self._pf.attrs.update({"features": ",".join(PARTICLE_FEATURES), "units": "1,rad,1,1"})
            self._jf.attrs.update({"features": ",".join(JET_FEATURES), "units": "GeV,1,GeV,1"})
            meta = {
                "format": JET_FORMAT,
                "format_version": "1.0",
                "caloforge_version": __version__,
                "jet_type": jet_type,
                "particle_features": ",".join(PARTICLE_FEATURES),
                "jet_features": ",".join(JET_FEATURES),
                "generator": generator,
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

    def write(self, jets: Jets) -> None:
        """Append ``jets`` (same particle count as the file)."""
        if jets.n_particles != self.n_particles:
            raise JetFileError(
                f"cannot write {jets.n_particles}-particle jets to a {self.n_particles}-particle file"
            )
        n = len(jets)
        with self._file.writing(jets.particles.nbytes + jets.jet.nbytes, n):
            for ds, data in ((self._pf, jets.particles), (self._jf, jets.jet)):
                ds.resize(self._n + n, axis=0)
                ds[self._n :] = data
        self._n += n

    def commit(self) -> Path:
        """Close the file, check it and move it onto ``path`` (on a failure the file is
        discarded and ``path`` left as it was)."""
        if not self._closed:
            self._closed = True
            try:
                self._h5.attrs["n_jets"] = self._n
            except BaseException:
                self._file.abort()
                raise
            self._file.commit({"particle_features": self._n, "jet_features": self._n})
        return self.path

    def abort(self) -> None:
        """Discard everything written."""
        if not self._closed:
            self._file.abort()
            self._closed = True

    def __enter__(self) -> JetWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_jets(path: str | Path, jets: Jets, **options: Any) -> None:
    """Write ``jets`` to ``path`` atomically (``options``: those of :class:`JetWriter`)."""
    with JetWriter(path, jets.n_particles, jets.jet_type, **options) as writer:
        writer.write(jets)
