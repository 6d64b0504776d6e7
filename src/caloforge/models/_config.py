"""What every model/run configuration shares: named presets and a JSON round trip."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, fields, replace
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="PresetConfig")


class PresetConfig:
    """Mixin for frozen dataclasses of run settings.

    Subclasses set ``KIND`` (for messages), ``PRESETS`` (name → instance, assigned after the
    presets are built) and ``LEGACY`` (fields added later, with the value that files written
    before them were made with).
    """

    KIND: ClassVar[str] = "config"
    PRESETS: ClassVar[dict[str, Any]] = {}
    LEGACY: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_preset(cls: type[C], name: str, **overrides: Any) -> C:
        """The preset ``name`` with some fields replaced."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.KIND} preset '{name}': use one of {', '.join(cls.PRESETS)}")
        return replace(cls.PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able mapping (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} config field(s): {', '.join(unknown)}")
        data = cls.LEGACY | data
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def check_point_model_fields(
    config: object, at_least_one: Iterable[str], positive: Iterable[str], widths: Iterable[str]
) -> None:
    """The checks the point-cloud configs share (``ValueError`` naming the field): ``at_least_one``
    fields >= 1, ``positive`` fields finite and > 0, ``checkpoint_minutes`` finite and >= 0,
    ``net_widths`` from 4 to 4 (x, y, layer, E), and every one of ``widths`` positive integers."""
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ValueError(f"config field '{name}' must be at least 1, got {getattr(config, name)}")
    for name in positive:
        value = getattr(config, name)
        if not 0 < value < math.inf:  # NaN fails too
            raise ValueError(f"config field '{name}' must be a positive finite number, got {value}")
    minutes = getattr(config, "checkpoint_minutes")  # noqa: B009 - a field every caller has
    if not 0 <= minutes < math.inf:
        raise ValueError(f"checkpoint_minutes must be finite and >= 0, got {minutes}")
    net = getattr(config, "net_widths")  # noqa: B009
    if len(net) < 2 or net[0] != 4 or net[-1] != 4:
        raise ValueError(f"net_widths must start and end with 4 (x, y, layer, E), got {net}")
    for name in widths:
        if any(w < 1 for w in getattr(config, name)):
            raise ValueError(f"{name} must be positive integers, got {getattr(config, name)}")
