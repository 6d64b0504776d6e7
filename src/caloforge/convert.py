"""``caloforge convert``: point-cloud files → cell images (or polar voxels), streamed in chunks.

The projection is :func:`caloforge.projection.voxelise_with_loss`, the one the evaluation uses:
a point's energy goes to the cell (or voxel) it falls in, summed. Energy outside the readout
window (the 30 × 30 cells of ``ild-ecal-30``, beyond the last ring of a polar grid) is not
silently lost: it is counted per shower, summarised in the output file's attributes
(``outside_fraction_mean``, ``outside_fraction_max``, ``outside_mev_total``) and returned; a
shower with more than ``max_outside`` of its energy outside the window is refused (the gun is
off the window, or the window is the wrong one), and nothing is written.

>>> import numpy as np, tempfile, pathlib
>>> from caloforge.io import PointShowers, open_showers, write_showers
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> pts = np.array([[[0.0, 0.0, 0.5, 3.0], [200.0, 0.0, 0.5, 1.0]]], np.float32)
>>> write_showers(d / "p.h5", PointShowers([50.0], pts), detector="ild-ecal")
>>> result = convert_showers(d / "p.h5", d / "img.h5", "ild-ecal-30")
>>> result.n_showers, round(result.outside_fraction_max, 2)
(1, 0.25)
>>> with open_showers(d / "img.h5") as f:
...     img = f.read().voxels.reshape(1, 30, 30, 30)
>>> float(img[0, 0, 15, 15])
3.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caloforge.detector import CellGrid, Detector, get_detector
from caloforge.io import PointShowers, ShowerFileError, ShowerWriter, open_showers
from caloforge.kinds import get_kind
from caloforge.projection import voxelise_with_loss
from caloforge.safety import check_outputs, output_lock, refuse_existing

__all__ = ["ConversionResult", "convert_showers"]

#: Refuse a shower with more than this share of its energy outside the window (by default).
MAX_OUTSIDE = 0.5
#: Source attributes that describe the point layout or the writer, not the showers.
_NOT_CARRIED = frozenset(
    {
        "format", "format_version", "caloforge_version", "detector", "detector_json",
        "detector_description", "energy_unit", "depth_unit", "layout", "axes", "length_unit",
        "padding", "generator", "seed",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_showers` wrote and how much energy fell outside the readout."""

    path: Path
    n_showers: int
    detector: str
    outside_fraction_mean: float
    outside_fraction_max: float
    outside_mev_total: float


def convert_showers(
    source: str | Path,
    out: str | Path,
    detector: str | Path | Detector = "ild-ecal-30",
    *,
    chunk_size: int = 1000,
    max_outside: float = MAX_OUTSIDE,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ConversionResult:
    """Project every shower of the point file ``source`` onto ``detector``'s readout; write the
    dense voxels (a cell image for a cell grid) to ``out`` atomically.

    ``detector`` must have ``source``'s layer stack (a window such as ``ild-ecal-30`` of
    ``ild-ecal``, or the file's own detector for polar voxels). Raises :class:`ValueError` (one
    line) for a non-point input, an incompatible detector or a shower mostly outside the window.
    """
    source, out = Path(source), Path(out)
    det = get_detector(detector)
    if not 0 < max_outside <= 1:
        raise ValueError(f"max_outside must lie in (0, 1], got {max_outside}")
    check_outputs({"--out": out}, {"SOURCE": source})
    refuse_existing(out, overwrite)  # before reading anything; again under the lock below
    with open_showers(source) as reader:
        if not get_kind(reader.kind).positions:
            raise ShowerFileError(
                f"'{source}' already holds voxels ({reader.detector.name}): convert reads point-cloud files"
            )
        own = reader.detector
        if isinstance(det.readout, CellGrid):
            same_stack = det.is_window_of(own)
        else:
            same_stack = det.layer_depths_mm == own.layer_depths_mm and det.n_layers == own.n_layers
        if not same_stack:
            raise ValueError(
                f"'{source}' is for detector '{own.name}'; '{det.name}' has another layer stack or cells "
                "that are not a window of its grid: convert onto a readout of the same detector "
                "(e.g. ild-ecal-30 for ild-ecal)"
            )
        n = len(reader)
        if n == 0:
            raise ShowerFileError(f"'{source}' holds no showers: nothing to convert")
        fractions = np.zeros(n)
        outside_total = 0.0
        with output_lock(out):
            refuse_existing(out, overwrite)  # another run may have written it meanwhile
            # what the showers are (particle, spectrum, physics, gun) travels; the layout does not
            attrs = {k: v for k, v in reader.attrs.items() if k not in _NOT_CARRIED}
            attrs |= {"converted_from": source.name, "converted_from_detector": own.name}
            seed = reader.attrs.get("seed")
            with ShowerWriter(
                out,
                "voxels",
                det,
                generator=reader.generator,
                seed=None if seed is None else int(seed),
                attrs=attrs,
                expected=n,
            ) as writer:
                done = 0
                for chunk in reader.iter_chunks(chunk_size):
                    assert isinstance(chunk, PointShowers)
                    voxels, lost = voxelise_with_loss(chunk, det)
                    total = chunk.points[..., 3].sum(axis=1, dtype=np.float64)
                    frac = np.divide(lost, total, out=np.zeros_like(lost), where=total > 0)
                    worst = int(np.argmax(frac)) if len(frac) else 0
                    if len(frac) and frac[worst] > max_outside:
                        raise ValueError(
                            f"'{source}': shower {done + worst} has {frac[worst]:.0%} of its energy outside "
                            f"the readout of '{det.name}' (more than {max_outside:.0%}): is the gun off the "
                            "window? Convert onto a larger grid, or raise --max-outside; nothing was written"
                        )
                    writer.write(voxels)
                    fractions[done : done + len(chunk)] = frac
                    outside_total += float(lost.sum())
                    done += len(chunk)
                    if progress is not None:
                        progress(done, n)
                summary = {
                    "outside_fraction_mean": float(fractions.mean()) if n else 0.0,
                    "outside_fraction_max": float(fractions.max()) if n else 0.0,
                    "outside_mev_total": outside_total,
                }
                writer.set_attrs(summary)
    return ConversionResult(out, n, det.name, **summary)
