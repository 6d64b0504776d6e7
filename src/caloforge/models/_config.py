"""What every model/run configuration shares: named presets and a JSON round trip."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from typing import Any, ClassVar, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

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
        return cls._from_values(cls.LEGACY | data)

    @classmethod
    def _from_values(cls: type[C], data: Mapping[str, Any]) -> C:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} config field(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def read_presets(cls: type[C], package: str, file: str = "presets.toml") -> dict[str, C]:
        """Read the class's presets from the TOML ``file`` shipped in ``package`` and make them
        its :attr:`PRESETS`: one table per preset, holding the fields that differ from the
        defaults (arrays become tuples). A class with a ``name`` field gets the preset's name.
        """
        text = resources.files(package).joinpath(file).read_text(encoding="utf-8")
        named = "name" in {f.name for f in fields(cls)}  # type: ignore[arg-type]
        presets = {
            preset: cls._from_values(({"name": preset} if named else {}) | values)
            for preset, values in tomllib.loads(text).items()
        }
        cls.PRESETS = presets
        return presets

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


@dataclass(frozen=True)
class LoopConfig(PresetConfig):
    """The settings that the shared training loop (:mod:`caloforge.models._training`) reads,
    which every family's config extends (re-declaring a field changes only its default).

    ``seed`` seeds the run; ``steps`` is the length of the whole loop, ``batch_size`` and
    ``lr`` those of its main network; ``grad_clip`` bounds the gradient norm (infinity: no
    clipping); ``log_every`` is the progress cadence in steps and ``checkpoint_minutes`` the
    time between checkpoints (0: every step). :meth:`check` checks these too.

    >>> LoopConfig(steps=0)
    Traceback (most recent call last):
    ...
    ValueError: training config: steps must be at least 1, got 0
    """

    KIND: ClassVar[str] = "training"

    seed: int = 0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    grad_clip: float = 10.0
    log_every: int = 100
    checkpoint_minutes: float = 5.0

    def __post_init__(self) -> None:
        self.check()

    def check(
        self,
        *,
        at_least_one: Iterable[str] = (),
        positive: Iterable[str] = (),
        above_zero: Iterable[str] = (),
        **rules: Any,
    ) -> None:
        """:meth:`PresetConfig.check` with the loop's fields added: ``steps``, ``batch_size``
        and ``log_every`` at least 1, ``lr`` positive and finite, ``grad_clip`` positive."""
        super().check(
            at_least_one=("steps", "batch_size", "log_every", *at_least_one),
            positive=("lr", *positive),
            above_zero=("grad_clip", *above_zero),
            **rules,
        )


@dataclass(frozen=True)
class EMALoopConfig(LoopConfig):
    """:class:`LoopConfig` with what :class:`~caloforge.models._training.EMATrainer` reads:
    the weight average's ``ema_decay`` (in [0, 1)), the held-out ``val_fraction`` (in [0,
    0.5)) and the validation cadence ``val_every`` (steps, at least 1)."""

    ema_decay: float = 0.999
    val_fraction: float = 0.05
    val_every: int = 250

    def check(
        self,
        *,
        at_least_one: Iterable[str] = (),
        fractions: Mapping[str, tuple[float, float]] | None = None,
        **rules: Any,
    ) -> None:
        """:meth:`LoopConfig.check` with the averaging and validation fields added."""
        super().check(
            at_least_one=("val_every", *at_least_one),
            fractions={"val_fraction": (0, 0.5), "ema_decay": (0, 1), **(fractions or {})},
            **rules,
        )
