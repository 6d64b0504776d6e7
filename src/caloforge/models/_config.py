"""What every model/run configuration shares: named presets and a JSON round trip."""

from __future__ import annotations

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
