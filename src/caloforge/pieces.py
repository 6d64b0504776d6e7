"""Finished pieces of a long job, kept on disk until the job assembles its output.

A job writing ``OUT`` in pieces (``caloforge simulate``: one block of events each) saves every
finished piece at once as its own file in ``.OUT.pieces/`` next to ``OUT``, written to a
temporary name and renamed, so a piece is either complete on disk or absent — whatever
kills the job, ``kill -9`` included, loses at most the pieces still being computed. The
directory's ``manifest.json`` records what the job is (its settings); a later run with
``--resume`` checks it and computes only the missing pieces. When every piece is there the
job assembles ``OUT`` (atomically) and removes the directory.

>>> import tempfile, pathlib, numpy as np
>>> out = pathlib.Path(tempfile.mkdtemp()) / "showers.h5"
>>> store = PieceStore.open(out, {"seed": 1}, resume=False, overwrite=False)
>>> store.save(0, 3, {"x": np.arange(3)})
>>> store.finished(), store.load(0)["x"].tolist()
({0: 3}, [0, 1, 2])
>>> PieceStore.open(out, {"seed": 2}, resume=True, overwrite=False)
Traceback (most recent call last):
...
caloforge.io.ShowerFileError: ...
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.atomic import atomic_open
from caloforge.io import ShowerFileError

__all__ = ["PieceStore", "pieces_dir"]

_MANIFEST = "manifest.json"


def pieces_dir(out: str | Path) -> Path:
    """Where the finished pieces of a job writing ``out`` wait: ``.NAME.pieces/`` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.pieces"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b))
        except (TypeError, ValueError):
            return False
    return a == b


class PieceStore:
    """The pieces directory of one output; use :meth:`open`."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self._pieces = self._scan()  # one writer per output (the lock): kept up to date here

    @classmethod
    def open(
        cls,
        out: str | Path,
        manifest: Mapping[str, Any],
        *,
        resume: bool,
        overwrite: bool,
        ignore: tuple[str, ...] = (),
    ) -> PieceStore:
        """The store of ``out`` for a job described by ``manifest`` (JSON-able).

        An existing store is continued with ``resume`` (its manifest must agree, except the
        keys in ``ignore``), discarded with ``overwrite``, and refused otherwise.
        """
        directory = pieces_dir(out)
        manifest = json.loads(json.dumps(dict(manifest)))
        if directory.exists():
            path = directory / _MANIFEST
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                if resume:  # its pieces may be good: say so, delete nothing
                    raise ShowerFileError(
                        f"cannot resume '{out}': '{path}' is unreadable ({exc}); its pieces are kept: "
                        "restore the file, or pass --overwrite to start again"
                    ) from None
                old = None
            if resume and not isinstance(old, dict):
                raise ShowerFileError(
                    f"cannot resume '{out}': '{path}' is not a job description; its pieces are kept: "
                    "restore the file, or pass --overwrite to start again"
                )
            if resume:
                for key, value in manifest.items():
                    if key not in ignore and not _same(old.get(key), value):
                        raise ShowerFileError(
                            f"cannot resume '{out}': its unfinished run was made with "
                            f"{key}={old.get(key)!r}, this job has {key}={value!r}"
                        )
                store = cls(directory, old | {k: manifest[k] for k in ignore if k in manifest})
                store._tidy()
                return store
            if not resume and not overwrite:
                raise FileExistsError(
                    f"'{directory}' holds an unfinished run writing '{out}': pass --resume to "
                    "continue it or --overwrite to start again"
                )
            shutil.rmtree(directory)
        directory.mkdir()
        store = cls(directory, manifest)
        store._write_manifest()
        return store

    def _write_manifest(self) -> None:
        with atomic_open(self.directory / _MANIFEST, "w", prefix=".manifest.") as f:
            json.dump(self.manifest, f, indent=1)

    def _tidy(self) -> None:
        """Remove half-written pieces a killed run left behind."""
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def _path(self, first: int, count: int | None = None) -> Path:
        if count is None:
            count = self._pieces[first]
        return self.directory / f"piece-{first:012d}-{count:09d}.npz"

    def save(self, first: int, count: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Store the piece of ``count`` items starting at item ``first`` (complete on disk, or not
        at all); a piece saved before at ``first`` is replaced."""
        with atomic_open(self._path(first, count), prefix=f".piece-{first:012d}.", durable=True) as f:
            np.savez(f, **arrays)
        old = self._pieces.get(first)
        self._pieces[first] = count
        if old is not None and old != count:
            self._path(first, old).unlink(missing_ok=True)

    def finished(self) -> dict[int, int]:
        """``{first item: number of items}`` of the pieces on disk, in order of ``first``."""
        return dict(sorted(self._pieces.items()))

    def _scan(self) -> dict[int, int]:
        """The pieces in the directory (read once, when the store is opened)."""
        found = []
        for p in self.directory.glob("piece-*-*.npz"):
            parts = p.stem.split("-")
            if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
                raise ShowerFileError(
                    f"'{p}' is not a piece this job wrote (piece-FIRST-COUNT.npz): move it out of "
                    f"'{self.directory}' and rerun"
                )
            found.append((int(parts[1]), int(parts[2])))
        return dict(sorted(found))

    def drop(self, first: int) -> None:
        """Forget one piece (it will be computed again)."""
        self._path(first).unlink(missing_ok=True)
        del self._pieces[first]

    def load(self, first: int) -> dict[str, np.ndarray]:
        """The arrays of one piece."""
        path = self._path(first)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ShowerFileError(
                f"piece {first} in '{self.directory}' is unreadable ({exc}); remove that file and "
                "rerun with --resume to compute it again"
            ) from exc
        for name, values in arrays.items():
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise ShowerFileError(
                    f"piece '{path}' holds non-finite values in {name} (damaged, or made so by the "
                    "model: a rerun makes the same piece); remove that file to compute it again"
                )
        return arrays

    def remove(self) -> None:
        """Delete the directory (after the output has been assembled)."""
        shutil.rmtree(self.directory, ignore_errors=True)
