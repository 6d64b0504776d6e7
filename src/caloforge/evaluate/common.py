"""What the shower and the jet evaluations share: the input error, the progress callback, the
report files, legend names, the checks of the paths before any work, and the JSON encoding.

>>> from pathlib import Path
>>> labels([Path("a/gen.h5"), Path("b/gen.h5"), Path("g4.h5")], ["model", "model", "geant4"])
['model (gen.h5) #0', 'model (gen.h5) #1', 'geant4']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.safety import check_output_dir

__all__ = [
    "REPORT_FILES",
    "EvaluationError",
    "Progress",
    "check_paths",
    "json_default",
    "labels",
    "write_reports",
]

#: Report files: an existing one is only replaced with ``overwrite``.
REPORT_FILES = ("report.md", "report.html", "metrics.json")


class EvaluationError(ValueError):
    """The inputs cannot be compared as asked."""


#: ``progress(stage, done, total)``, called as the slow parts of an evaluation advance.
Progress = Callable[[str, int, int], None]


def labels(paths: Sequence[Path], generators: Sequence[str]) -> list[str]:
    """Readable, unique legend names: the generator, plus the file name where needed."""
    names = [
        g if generators.count(g) == 1 else f"{g} ({p.name})" for p, g in zip(paths, generators, strict=True)
    ]
    return [name if names.count(name) == 1 else f"{name} #{i}" for i, name in enumerate(names)]


def check_paths(inputs: Sequence[Path], out: Path, overwrite: bool) -> None:
    """Refuse, before any work, inputs that are directories, an ``out`` that is an input or a
    file, and (unless ``overwrite``) an ``out`` that already holds a report."""
    for path in inputs:
        if path.is_dir():
            raise EvaluationError(f"'{path}' is a directory: give shower files to compare")
    check_output_dir(out, inputs, purpose="the report", error=EvaluationError)
    if not overwrite and any((out / name).exists() for name in REPORT_FILES):
        raise FileExistsError(
            f"'{out}' already holds a report ({'/'.join(REPORT_FILES)}): pass --overwrite to replace it"
        )


def json_default(value: Any) -> Any:
    """``default`` of :func:`json.dumps` for ``metrics.json``: numpy scalars and arrays, tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def write_reports(out: Path, result: dict[str, Any], markdown: str) -> None:
    """``metrics.json`` (``result``), ``report.md`` (``markdown``) and the self-contained
    ``report.html`` (:func:`caloforge.evaluate.html.html_report`) in ``out``, each atomically."""
    import json

    from caloforge.atomic import atomic_write_text
    from caloforge.evaluate.html import html_report

    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, default=json_default))
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", html_report(result, markdown, out))
