"""``caloforge export``: a trained model as one self-contained graph for C++ simulation frameworks.

Which formats a model can be written in is its family's to say
(:attr:`~caloforge.models.protocol.Capabilities.export`); the graph contract of each
family is in docs/export.md. :func:`load_exported` runs an exported ONNX file with ONNX
Runtime through the runner of the family that wrote it (recorded in the file's metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caloforge.models.registry import family_of, get_family

__all__ = ["EXPORT_FORMATS", "export_model", "exported_family", "load_exported"]

#: Formats ``caloforge export`` knows (each family writes some of them).
EXPORT_FORMATS = ("onnx", "torchscript")


def export_model(model: str | Path, out: str | Path, format: str = "onnx", **options: Any) -> Path:
    """Write ``model`` (a shipped name, run directory or checkpoint) as ``format`` to ``out``.

    ``options`` (e.g. ``max_points``, ``sampler``, ``n_steps``) go to the family's exporter;
    ``None`` values mean its defaults. A family without that format raises
    :class:`~caloforge.models.protocol.UnsupportedError`.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format '{format}': use one of {', '.join(EXPORT_FORMATS)}")
    family, path, _ = family_of(model)
    family.require("export", format)
    given = {k: v for k, v in options.items() if v is not None}
    return family.part("exporter")(path, out, format, **given)


def exported_family(path: str | Path) -> str:
    """The model family recorded in an exported ONNX file (``model_family`` metadata)."""
    try:
        import onnx
    except ImportError:
        raise ValueError(
            "reading ONNX files needs the onnx package: pip install 'caloforge[export]'"
        ) from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"'{path}' is not a readable ONNX file ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("producer") != "caloforge" or "model_family" not in meta:
        raise ValueError(f"'{path}' was not exported by caloforge export")
    return meta["model_family"]


def load_exported(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime generator of the exported file ``path`` (its family's ``runner``):
    ``.generate(energies, batch_size)``, ``.detector``, ``.network_calls``."""
    family = get_family(exported_family(path))
    return family.part("runner")(path, threads)
