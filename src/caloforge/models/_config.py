"""What every model/run configuration shares: named presets and a JSON round trip."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, fields, replace
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="PresetConfig")


class PresetConfig:
    """Mixin for frozen dataclasses of run settings.

    Subclasses set ``KIND`` (for messages), ``PRESETS`` (name → instance, assigned after the
    presets are built) and ``LEGACY`` (fields added later, with the value that files written
    before them were made with), and validate their fields in ``__post_init__`` with
    :meth:`check`.
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

    def check(
        self,
        *,
        at_least_one: Iterable[str] = (),
        at_least_zero: Iterable[str] = (),
        odd: Iterable[str] = (),
        positive: Iterable[str] = (),
        above_zero: Iterable[str] = (),
        non_negative: Iterable[str] = (),
        fractions: Mapping[str, tuple[float, float]] | None = None,
        choices: Mapping[str, Collection[str]] | None = None,
        point_widths: Iterable[str] = (),
        widths: Iterable[str] = (),
        optional: Collection[str] = (),
    ) -> None:
        """Refuse out-of-range fields with a one-line ``ValueError`` "<KIND> config: <field> must ...".

        ``at_least_one`` / ``at_least_zero``: counts >= 1 / >= 0; ``odd``: positive odd integers;
        ``positive``: finite and > 0 (NaN fails); ``above_zero``: > 0, infinity allowed (NaN
        fails); ``non_negative``: finite and >= 0 (``checkpoint_minutes`` too, wherever the config
        has it); ``fractions``: field → ``(lo, hi)``, in ``[lo, hi)``;
        ``choices``: field → allowed strings; ``point_widths``: PointWise Net widths, starting
        and ending with 4 (x, y, layer, E), and positive integers like every one of ``widths``.
        A field named in ``optional`` may also be ``None``. The checks run in that order.
        """
        if hasattr(self, "checkpoint_minutes"):
            non_negative = (*non_negative, "checkpoint_minutes")
        point_widths = tuple(point_widths)
        rules: list[tuple[Iterable[str], Callable[[Any], bool], str]] = [
            (at_least_one, lambda v: v < 1, "must be at least 1"),
            (at_least_zero, lambda v: v < 0, "must be >= 0"),
            (odd, lambda v: v < 1 or v % 2 == 0, "must be a positive odd number"),
            (positive, lambda v: not 0 < v < math.inf, "must be a positive finite number"),
            (above_zero, lambda v: not v > 0, "must be positive"),
            (non_negative, lambda v: not 0 <= v < math.inf, "must be finite and >= 0"),
        ]
        for name, (lo, hi) in (fractions or {}).items():
            rules.append(((name,), lambda v, lo=lo, hi=hi: not lo <= v < hi, f"must be in [{lo}, {hi})"))
        for name, options in (choices or {}).items():
            rules.append(((name,), lambda v, o=options: v not in o, f"must be one of {', '.join(options)}"))
        rules += [
            (
                point_widths,
                lambda v: len(v) < 2 or v[0] != 4 or v[-1] != 4,
                "must start and end with 4 (x, y, layer, E)",
            ),
            ((*point_widths, *widths), lambda v: any(w < 1 for w in v), "must be positive integers"),
        ]
        for names, fails, what in rules:
            for name in names:
                value = getattr(self, name)
                if not (value is None and name in optional) and fails(value):
                    got = repr(value) if isinstance(value, str) else value
                    raise ValueError(f"{self.KIND} config: {name} {what}, got {got}")
