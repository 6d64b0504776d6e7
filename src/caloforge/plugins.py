"""Plug-ins looked up by name, the way families (:mod:`caloforge.models.registry`) and output
kinds (:mod:`caloforge.kinds`) are: ``module:attribute`` references, an entry-point group and an
environment variable of comma-separated references. Imports nothing heavy.

>>> resolve("math:pi") > 3
True
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

__all__ = ["plugins", "resolve"]


def resolve(reference: str) -> Any:
    """The object ``module:attribute`` names (imports the module)."""
    module, _, attr = reference.partition(":")
    return getattr(importlib.import_module(module), attr)


def plugins(group: str, variable: str, default_attr: str, cls: type) -> Iterator[Any]:
    """The ``cls`` objects of the entry-point ``group`` (others are skipped), then those the
    environment variable ``variable`` names (``module:attribute``, the attribute
    ``default_attr`` when left out); a reference there that does not load, or names no ``cls``,
    is a one-line ``ValueError``."""
    for entry in entry_points(group=group):
        found = entry.load()
        if isinstance(found, cls):
            yield found
    what = f"{cls.__module__}.{cls.__qualname__}"
    for reference in filter(None, os.environ.get(variable, "").split(",")):
        module, _, attr = reference.strip().partition(":")
        try:
            found = getattr(importlib.import_module(module), attr or default_attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{variable} names '{reference}', which cannot load: {exc}") from None
        if not isinstance(found, cls):
            raise ValueError(f"{variable}: '{reference}' is not a {what}")
        yield found
