"""The contract between a model family and everything that runs it.

A **family** (CaloClouds II, CaloDREAM, …) is one sub-package of :mod:`caloforge.models`
that exposes a :class:`Family`: what its checkpoints are called (their stored ``format``
key), what it supports (:class:`Capabilities`) and where its loader lives. The
:mod:`~caloforge.models.registry` maps a checkpoint's format key to its family; the family's
loader turns the checkpoint into a :class:`ShowerGenerator`.

A generator states its detector, the kind of showers it writes (:data:`OutputKind`), the
particle it was trained on, the :class:`Condition` s it takes with their trained ranges, and
makes one batch of showers as a pure function of ``(conditions, plan, seed, batch index)``:
the same arguments give the same showers in any process, so a run can be split over workers
at batch boundaries. :meth:`ShowerGenerator.plan` checks a :class:`GenerationRequest` (the
user's sampler, steps, precision, …) once, before any work starts, and resolves it into a
:class:`Plan` that every batch of the run uses.

This module needs NumPy only: importing it (or a family's package) imports no network code.

>>> energy = Condition("energy", "GeV", 10.0, 90.0)
>>> check_conditions((energy,), {"energy": [20.0, 50.0]}, allow_extrapolation=False)["energy"].tolist()
[20.0, 50.0]
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from caloforge.plugins import resolve

if TYPE_CHECKING:
    from caloforge.detector import Detector

__all__ = [
    "CHECKPOINT_EXPORTS",
    "MAX_SAMPLER_STEPS",
    "OUTPUT_KINDS",
    "PRECISIONS",
    "Capabilities",
    "CheckpointError",
    "Condition",
    "Family",
    "GenerationError",
    "GenerationRequest",
    "Option",
    "OutputKind",
    "Plan",
    "SamplerInfo",
    "ShowerGenerator",
    "Training",
    "UnsupportedError",
    "batch_conditions",
    "batch_seed",
    "check_conditions",
    "energy_condition",
    "exports_of",
    "generate_batches",
    "lazy_exports",
    "loop_options",
]

#: What a generator's output is: the name of a registered :class:`caloforge.kinds.Kind`, which
#: says how its batches are written, read, evaluated and benchmarked (kinds are plug-ins, as
#: families are). Cell images are ``voxels`` on a cell-grid detector, not a kind of their own.
OutputKind = str
#: The built-in kinds (``caloforge.kinds.kinds()`` lists every registered one).
OUTPUT_KINDS: tuple[str, ...] = ("points", "voxels", "jets")
#: Values of a request's ``precision``; a family states which of them it runs.
PRECISIONS = ("auto", "float32", "bfloat16")


class GenerationError(ValueError):
    """Showers cannot be generated as asked (conditions outside the trained range, a sampler
    the model does not have, …)."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format or version, or does not fit the run."""


class UnsupportedError(ValueError):
    """The model's family does not support what was asked (export, calibration, workers, GPU)."""


@dataclass(frozen=True)
class Condition:
    """One conditioning input of a generator: its name, unit and the range it was trained on."""

    name: str
    unit: str
    low: float
    high: float
    positive: bool = True  # values must be > 0 (energies)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"name": self.name, "unit": self.unit, "low": self.low, "high": self.high}


def energy_condition(energy_range: Sequence[float]) -> Condition:
    """The incident-energy condition (GeV) over ``energy_range``."""
    return Condition("energy", "GeV", float(energy_range[0]), float(energy_range[1]))


def check_conditions(
    conditions: Sequence[Condition], values: Mapping[str, Any], allow_extrapolation: bool
) -> dict[str, np.ndarray]:
    """``values`` as float64 arrays of one length, checked against ``conditions``.

    Every condition must be given, finite (and positive where it says so) and, unless
    ``allow_extrapolation``, inside its trained range (with a relative slack of 1e-3 at each
    end). Raises :class:`GenerationError` naming the first problem.
    """
    out: dict[str, np.ndarray] = {}
    unknown = sorted(set(values) - {c.name for c in conditions})
    if unknown:
        raise GenerationError(
            f"this model takes no condition '{unknown[0]}': it takes {', '.join(c.name for c in conditions)}"
        )
    for cond in conditions:
        if cond.name not in values:
            raise GenerationError(f"the condition '{cond.name}' ({cond.unit}) is missing")
        v = np.asarray(values[cond.name], dtype=np.float64).reshape(-1)
        bad = ~np.isfinite(v) | ((v <= 0) if cond.positive else False)
        if bad.any():
            what = "finite and positive" if cond.positive else "finite"
            raise GenerationError(
                f"{cond.name} values must be {what} ({cond.unit}); got {v[bad][0]!r} at position "
                f"{int(np.flatnonzero(bad)[0])}"
            )
        lo, hi = cond.low, cond.high
        outside = (v < lo - 1e-3 * abs(lo)) | (v > hi + 1e-3 * abs(hi))
        if outside.any() and not allow_extrapolation:
            label = "incident energies" if cond.name == "energy" else f"{cond.name} values"
            raise GenerationError(
                f"{int(outside.sum())} {label} (e.g. {v[outside][0]:.4g} {cond.unit}) lie outside the "
                f"trained range {lo:.4g}-{hi:.4g} {cond.unit}; pass --allow-extrapolation "
                "(allow_extrapolation=True) to generate them anyway"
            )
        out[cond.name] = v
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise GenerationError(f"conditions of different lengths: {sorted(lengths)}")
    return out


@dataclass(frozen=True)
class SamplerInfo:
    """The one description of how a model samples, whatever its family: the sampler's (or ODE
    solver's) ``name``, its ``n_steps`` and the network evaluations that costs per shower."""

    name: str
    n_steps: int
    network_calls: int


#: The most sampler steps a generation may ask for: far beyond any published sampler (tens to
#: hundreds), and small enough that a sampler's noise schedule stays a few kB.
MAX_SAMPLER_STEPS = 10_000


@dataclass(frozen=True)
class GenerationRequest:
    """What a user asks of a generation run; ``None`` means the model's own choice.

    ``options`` carries family-specific settings (e.g. CaloClouds II's ``points_per_call``).
    """

    sampler: str | None = None
    n_steps: int | None = None
    precision: str = "auto"
    allow_extrapolation: bool = False
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_steps is not None and not 1 <= self.n_steps <= MAX_SAMPLER_STEPS:
            raise GenerationError(
                f"--steps {self.n_steps}: a sampler takes 1 to {MAX_SAMPLER_STEPS:,} steps (the published "
                "samplers use at most a few hundred)"
            )


@dataclass(frozen=True)
class Plan:
    """A checked, resolved :class:`GenerationRequest` (picklable: workers receive it).

    ``attrs`` are the family's attributes of a generated file (besides the common ones);
    ``options`` what its batch function needs.
    """

    sampler: SamplerInfo
    precision: str = "float32"
    device: str = "cpu"
    allow_extrapolation: bool = False
    attrs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class ShowerGenerator(Protocol):
    """A loaded model, ready to generate (see the module docstring).

    ``output`` names its :class:`caloforge.kinds.Kind` (``points``, ``voxels``, ``jets``), which
    says what its batches are and how they are written. ``detector`` is the calorimeter it was
    trained for, or ``None`` for a kind without one (``Kind.calorimeter`` is False: jets, whose
    batches are :class:`caloforge.jets.io.Jets`).
    """

    family: str  # the Family's name
    label: str  # what generated files record as their generator (e.g. "caloclouds2-cm")
    detector: Detector | None  # None for kinds without a calorimeter (jets)
    output: OutputKind
    particle: str  # the particle it was trained on ("gamma", "e-", …)
    conditions: tuple[Condition, ...]
    complete: bool  # False: training stopped early

    def plan(self, request: GenerationRequest) -> Plan:
        """Check ``request`` against the model and resolve it, or raise :class:`GenerationError`."""
        ...

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        """Showers for one batch of (checked) ``conditions``: a pure function of the arguments
        (batch ``index`` of a run with ``seed`` draws from :func:`batch_seed`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Plain facts about the model for ``caloforge info`` (parameters, sampler, …)."""
        ...

    # Optional: a generator whose conditions a user does not set from an energy spectrum
    # (jets: pT, mass, multiplicity) has ``sample_conditions(n, seed, options) -> dict[str,
    # ndarray]``, ``n`` conditions drawn from its training distribution (what ``caloforge
    # generate`` uses without a conditions file; ``options``: the run's generation options).


def batch_seed(seed: int, index: int) -> int:
    """Seed of batch ``index`` of a generation with ``seed``: every batch is its own random
    stream, so any split of the batches over processes gives the same showers.

    >>> batch_seed(0, 1) == batch_seed(0, 1) != batch_seed(0, 2)
    True
    """
    # Shift a Python int: numpy 1.x refuses ``np.uint64 >> int`` under its casting rules.
    return int(np.random.SeedSequence([seed % 2**63, index]).generate_state(1, np.uint64)[0]) >> 1


def batch_conditions(
    generator: ShowerGenerator,
    conditions: Mapping[str, Any],
    plan: Plan,
    batch_size: int = 64,
    first_batch: int = 0,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(batch index, conditions of that batch)`` of a run, ``batch_size`` showers each; the
    first batch has index ``first_batch``. The conditions are checked (:func:`check_conditions`)
    at the call, before anything is generated."""
    if batch_size < 1:
        raise GenerationError(f"batch_size must be at least 1, got {batch_size}")
    values = check_conditions(generator.conditions, conditions, plan.allow_extrapolation)
    n = len(next(iter(values.values()))) if values else 0
    return (
        (index, {k: v[start : start + batch_size] for k, v in values.items()})
        for index, start in enumerate(range(0, n, batch_size), start=first_batch)
    )


def generate_batches(
    generator: ShowerGenerator,
    conditions: Mapping[str, Any],
    plan: Plan,
    seed: int = 0,
    batch_size: int = 64,
    first_batch: int = 0,
) -> Iterator[Any]:
    """``generator``'s showers for ``conditions``, ``batch_size`` at a time, in order (checked at
    the call, generated as the iterator is consumed).

    Batch ``k`` is :meth:`ShowerGenerator.generate_batch` with index ``first_batch + k``, so a
    long run can be made in pieces that start at multiples of ``batch_size``.
    """
    batches = batch_conditions(generator, conditions, plan, batch_size, first_batch)
    return (generator.generate_batch(chunk, plan, seed, index) for index, chunk in batches)


#: The checkpoint names a family package exports through :func:`lazy_exports`: the format key
#: and version from its ``model`` module, ``load_model`` / ``save_for_inference`` from its
#: ``checkpoint`` module.
CHECKPOINT_EXPORTS: Mapping[str, str] = {
    "CHECKPOINT_FORMAT": "model",
    "CHECKPOINT_VERSION": "model",
    "load_model": "checkpoint",
    "save_for_inference": "checkpoint",
}


def exports_of(**modules: str | tuple[str, ...]) -> dict[str, str]:
    """The ``name → module`` mapping :func:`lazy_exports` takes, from each module of a package
    and the public name (or names) it defines.

    >>> exports_of(config=("XConfig", "PRESETS"), training="train")
    {'XConfig': 'config', 'PRESETS': 'config', 'train': 'training'}
    """
    return {
        name: module
        for module, names in modules.items()
        for name in ((names,) if isinstance(names, str) else names)
    }


def lazy_exports(package: str, exports: Mapping[str, str]) -> Any:
    """A module ``__getattr__`` for ``package`` that imports ``package.<exports[name]>`` on the
    first access of ``name``: how a family's package stays free of heavy imports."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def _resolve(reference: str) -> Any:
    """The object ``module:attribute`` names."""
    try:
        return resolve(reference)
    except ImportError as exc:
        module = reference.partition(":")[0]
        raise ImportError(
            f"{module} needs a missing package ({exc}); install the model extra: pip install 'caloforge[ml]'"
        ) from exc


@dataclass(frozen=True)
class Option:
    """A setting a family takes on a command, declared once: ``caloforge train <command>`` shows
    it as ``--name`` (typed, with ``help``), ``caloforge info`` lists it.

    ``target`` says where the value goes: ``"config"`` (a field of the run's config, ``field``
    when it is named otherwise) or ``"train"`` (a keyword of the family's train function).
    ``parse`` names a text parser (``"widths"``: ``4,64,64,4`` → a tuple of ints); ``min`` is
    the smallest number accepted. ``None`` (the default) means "the preset's / the function's".
    ``draws_conditions`` marks a generate option that chooses how a model draws its own
    conditions: meaningless, and refused, beside conditions read from a file.

    >>> Option("steps", int, "Training steps.", min=1).flag
    '--steps'
    """

    name: str
    type: type
    help: str
    default: Any = None
    min: float | None = None
    target: Literal["config", "train"] = "config"
    field: str | None = None
    parse: str | None = None
    draws_conditions: bool = False

    @property
    def flag(self) -> str:
        """The command-line spelling, ``--max-showers`` for ``max_showers``."""
        return "--" + self.name.replace("_", "-")

    def convert(self, value: Any, spelling: str | None = None) -> Any:
        """``value`` as this option's type (text ``true``/``false`` for booleans), at least
        ``min``; a one-line ``ValueError`` naming ``spelling`` (default the flag) otherwise."""
        where = spelling or self.flag
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                value = value.lower() == "true"
            if self.type is int and (
                isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())
            ):
                raise ValueError(value)  # int(True) and int(2.5) would pass silently
            converted = self.type(value)
        except (TypeError, ValueError, OverflowError):
            what = _TYPE_WORDS.get(self.type, f"a {self.type.__name__}")
            raise ValueError(f"{where} takes {what}, got {value!r}") from None
        if self.min is not None and not converted >= self.min:  # NaN fails too
            raise ValueError(f"{where} must be at least {self.min:g}, got {value!r}")
        return converted

    @property
    def key(self) -> str:
        """The config field or train keyword the value goes to."""
        return self.field or self.name


_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text", Path: "a path"}


def point_generation_options() -> tuple[Option, ...]:
    """The generation options of the point-cloud families (CaloClouds II and (I))."""
    return (
        Option("points_per_call", int, "Padded points per network call (memory against speed).", min=1),
        Option("fast", bool, "The folded PointWise Net (true, the default) or the plain one (false)."),
    )


def steps_option(help: str = "Training steps (default: the preset's).") -> Option:
    """The ``--steps`` option most trainings take."""
    return Option("steps", int, help, min=1)


def batch_size_option(least: int = 1) -> Option:
    """The ``--batch-size`` option, at least ``least``."""
    return Option("batch_size", int, "Batch size (default: the preset's).", min=least)


def max_showers_option(least: int = 20, target: Literal["config", "train"] = "train") -> Option:
    """``--max-showers N``: train on the first N showers of the file only."""
    return Option(
        "max_showers", int, "Train on the first N showers of the file only.", min=least, target=target
    )


def loop_options(least_batch: int = 1) -> tuple[Option, ...]:
    """``--steps``, ``--batch-size`` (at least ``least_batch``) and ``--max-showers``: the
    options of a training whose loop is all its family needs changed from the command line."""
    return (steps_option(), batch_size_option(least_batch), max_showers_option())


def _package_name(package: str) -> str:
    return package.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Training:
    """How a family trains one of its networks: the ``caloforge train <command>`` it answers.

    ``config`` names a :class:`~caloforge.models._config.PresetConfig` class (its presets are
    the ``--preset`` choices; ``config_fixed`` fields are set for this command); ``train``
    names the function every run goes through::

        train(config, data_path=..., out_dir=..., resume=..., progress=..., max_minutes=...,
              **train_fixed, **train_options) -> TrainResult

    which runs the shared loop of :mod:`caloforge.models._training` (checkpoints, resume,
    Ctrl-C, time budget, divergence guard). ``options`` are the family's own settings;
    ``distributed``: the training runs on several processes (``--nproc``, torchrun); ``gpu``:
    it runs on a CUDA device too (its train function takes ``device`` and ``precision``).
    """

    command: str
    title: str
    summary: str
    config: str
    train: str
    data_help: str
    preset_help: str = "cpu (2 CPU cores), paper (published sizes, for a GPU) or smoke (tests)."
    options: tuple[Option, ...] = ()
    config_fixed: Mapping[str, Any] = field(default_factory=dict)
    train_fixed: Mapping[str, Any] = field(default_factory=dict)
    distributed: bool = False
    gpu: bool = False

    @classmethod
    def of_package(
        cls, package: str, config_class: str, *, title: str, summary: str, data_help: str, **fields: Any
    ) -> Training:
        """The training laid out the usual way in the family ``package``: the command is the
        package's name (unless ``command`` is given), the config ``<package>.config:<config_class>``
        and the entry point ``<package>.training:train``; ``fields`` as :class:`Training`'s.

        >>> t = Training.of_package("caloforge.models.x", "XConfig", title="X", summary="S.", data_help="D.")
        >>> t.command, t.train
        ('x', 'caloforge.models.x.training:train')
        """
        return cls(
            command=fields.pop("command", _package_name(package)),
            title=title,
            summary=summary,
            config=f"{package}.config:{config_class}",
            train=f"{package}.training:train",
            data_help=data_help,
            **fields,
        )

    def device(self, spec: str) -> str:
        """The device ``--device spec`` names for this training (:func:`caloforge.devices.resolve_device`):
        for a training without ``gpu`` the CPU (``auto`` means the CPU; CUDA is refused in one line)."""
        from caloforge.devices import resolve_device

        return resolve_device(spec, cpu_only=None if self.gpu else f"{self.title} training")

    def config_class(self) -> Any:
        """The config class (imports the family's config module)."""
        return _resolve(self.config)

    def make_config(self, preset: str, seed: int, values: Mapping[str, Any]) -> Any:
        """The run's config: ``preset`` with ``seed``, the fixed fields and the config options
        given (not None) in ``values``."""
        overrides = {
            o.key: values[o.name]
            for o in self.options
            if o.target == "config" and values.get(o.name) is not None
        }
        return self.config_class().from_preset(preset, seed=seed, **self.config_fixed, **overrides)

    def train_options(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The train keywords: the fixed ones and the train options given (not None)."""
        given = {
            o.key: values[o.name]
            for o in self.options
            if o.target == "train" and values.get(o.name) is not None
        }
        return dict(self.train_fixed) | given

    def run(self, config: Any, data: Path, out: Path, **kwargs: Any) -> Any:
        """Train: the family's train function with the run's arguments."""
        return _resolve(self.train)(config, data_path=data, out_dir=out, **kwargs)


@dataclass(frozen=True)
class Capabilities:
    """What a family supports beyond generating on one CPU process.

    ``calibrate``: ``caloforge calibrate`` refits a calibration; ``export``: the formats
    ``caloforge export`` writes; ``gpu``: generation on a CUDA device; ``workers``: batches
    spread over processes (``--workers``); ``precisions``: the network precisions it runs.
    """

    calibrate: bool = False
    export: tuple[str, ...] = ()
    gpu: bool = False
    workers: bool = True
    precisions: tuple[str, ...] = ("float32",)


#: Capability names :meth:`Family.require` knows, with how a user would ask for each.
_ASKED = {
    "calibrate": "caloforge calibrate",
    "export": "caloforge export",
    "gpu": "generation on a GPU",
    "workers": "--workers > 1",
}


@dataclass(frozen=True)
class Family:
    """A model family: its name, the checkpoint format keys it reads, what it supports, and
    ``module:function`` references to its parts (imported only when used).

    * ``loader(path, state) -> ShowerGenerator`` — a generator from a checkpoint's contents;
    * ``calibrator(path, data, out, *, seed, progress, device="cpu", **options) -> str`` (a
      summary line; ``device``, a resolved torch device, is where it runs the networks: a
      plug-in's calibrator without the keyword runs on the CPU, and ``--device cuda`` is
      refused for it by name);
    * ``exporter(path, out, format, **options) -> Path``;
    * ``runner(path, threads)`` — runs an exported ONNX file: ``.generate(energies, batch_size)``,
      ``.detector``, ``.network_calls``;
    * ``trainings`` — how its networks train (:class:`Training`): each is a ``caloforge train``
      command, built by the command line from the declaration;
    * ``commands(train_app, app)`` — adds the family's other commands (``distill``, …);
    * ``generate_options``, ``calibrate_options`` — the :class:`Option` s its models take on
      ``caloforge generate --option KEY=VALUE`` and ``caloforge calibrate`` (listed by
      ``caloforge info MODEL``; :meth:`check_options` checks what a user gave);
    * ``shipped`` — shipped model names → asset file names;
    * ``bench_models`` — the shipped models ``caloforge bench`` times by default, ``(label, name)``;
    * ``output`` — the kind of files its models write (:data:`OutputKind`).
    """

    name: str
    description: str
    formats: tuple[str, ...]
    loader: str
    output: str = "points"
    capabilities: Capabilities = Capabilities()
    calibrator: str | None = None
    exporter: str | None = None
    runner: str | None = None
    commands: str | None = None
    trainings: tuple[Training, ...] = ()
    generate_options: tuple[Option, ...] = ()
    calibrate_options: tuple[Option, ...] = ()
    shipped: Mapping[str, str] = field(default_factory=dict)
    bench_models: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of_package(cls, package: str, description: str, **fields: Any) -> Family:
        """The family laid out the usual way in ``package``: named after the package, reading
        the ``caloforge-<name>`` checkpoint format (unless ``formats`` is given) with the loader
        ``<package>.generation:load_generator``; ``fields`` as :class:`Family`'s.

        >>> Family.of_package("caloforge.models.x", "X").formats
        ('caloforge-x',)
        """
        name = _package_name(package)
        layout = {"formats": (f"caloforge-{name}",), "loader": f"{package}.generation:load_generator"}
        return cls(name=name, description=description, **(layout | fields))

    def load(self, path: Path, state: dict[str, Any]) -> ShowerGenerator:
        """The generator of the checkpoint ``path`` whose contents are ``state``."""
        return _resolve(self.loader)(path, state)

    def require(self, capability: str, value: str | None = None) -> None:
        """Raise :class:`UnsupportedError` unless the family has ``capability`` (for ``export``:
        the format ``value``). Precisions are the generators' own to check, in ``plan``."""
        caps = self.capabilities
        if capability == "export":
            if value not in caps.export:
                have = f"it writes {', '.join(caps.export)}" if caps.export else "it has no export"
                raise UnsupportedError(f"{self.description} models cannot be exported as {value}: {have}")
            return
        if capability not in {f.name for f in fields(Capabilities)} or not getattr(caps, capability):
            raise UnsupportedError(
                f"{self.description} models do not support {_ASKED.get(capability, capability)}"
            )

    def options(self, command: str) -> tuple[Option, ...]:
        """The options the family declares for ``command``: ``train`` (every training's),
        ``generate`` or ``calibrate``."""
        if command == "train":
            return tuple(o for t in self.trainings for o in t.options)
        return tuple(getattr(self, f"{command}_options"))

    def check_options(self, command: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """The options given (not None) for ``command`` (``generate``, ``calibrate``), checked
        against the declared ones and converted to their types: an undeclared one or a value
        out of range is a one-line ``ValueError``.

        >>> fam = Family("x", "X", ("x",), "m:f", generate_options=(Option("temperature", float, "T."),))
        >>> fam.check_options("generate", {"temperature": 1})
        {'temperature': 1.0}
        """
        declared = {o.name: o for o in self.options(command)}
        flag = command == "calibrate"  # calibrate options are flags; generate ones KEY=VALUE
        takes = ", ".join((o.flag if flag else o.name) for o in declared.values()) or "none"
        out: dict[str, Any] = {}
        for key, value in given.items():
            if value is None:
                continue
            option = declared.get(key)
            if option is None:
                if flag:
                    flag_name = "--" + key.replace("_", "-")
                    raise UnsupportedError(
                        f"{flag_name} is not a {self.description} calibration option (it takes {takes})"
                    )
                raise UnsupportedError(
                    f"unknown {self.description} generation option '{key}' (it takes {takes})"
                )
            out[key] = option.convert(value, option.flag if flag else key)
        return out

    def part(self, which: str) -> Any:
        """The object a reference field (``calibrator``, ``exporter``, ``runner``, ``commands``) names."""
        reference = getattr(self, which)
        if reference is None:
            raise UnsupportedError(f"{self.description} models have no {which}")
        return _resolve(reference)
