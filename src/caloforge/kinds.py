"""Output kinds as plug-ins: what a generator's files are, and everything that depends on it.

A **kind** (points, voxels, jets) is a :class:`Kind`: its name, the batch type generators
return, the noun of messages ("showers", "jets"), how its files are recognised, read, written,
shown by ``caloforge info`` and evaluated, how a batch travels as plain arrays (Dask pieces),
and its reference simulator for ``caloforge bench`` (:class:`Reference`: Geant4, or Pythia 8 +
FastJet for jets). Consumers (:mod:`caloforge.generation`, :mod:`caloforge.bench`,
:mod:`caloforge.cli`, :mod:`caloforge.evaluate`) ask the kind of a generator
(``get_kind(generator.output)``) or of a file (:func:`kind_of_file`) instead of comparing names.
Cell images are ``voxels`` on a cell-grid detector (``ild-ecal-30``), not a kind of their own.

The heavy parts are ``"module:attribute"`` references, imported when used, as a
:class:`~caloforge.models.protocol.Family`'s are: importing this module imports neither h5py
nor torch. Other packages add kinds through the ``caloforge.kinds`` entry-point group, the
environment variable ``CALOFORGE_KINDS`` (comma-separated ``module:attribute`` references to
:class:`Kind` objects; child processes inherit it) or :func:`register_kind`.

>>> [k.name for k in kinds()]
['points', 'voxels', 'jets']
>>> get_kind("jets").noun, get_kind("jets").reference.label
('jets', 'Pythia 8 + FastJet')
>>> get_kind("images")
Traceback (most recent call last):
...
ValueError: unknown output kind 'images': use one of points, voxels, jets
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caloforge.plugins import plugins, resolve

__all__ = [
    "GEANT4",
    "JETS",
    "POINTS",
    "PYTHIA8",
    "VOXELS",
    "Kind",
    "Reference",
    "fallback_kind",
    "file_kind",
    "get_kind",
    "kind_of_file",
    "kind_of_result",
    "kinds",
    "register_kind",
    "reload",
]


@dataclass(frozen=True)
class Reference:
    """The simulator ``caloforge bench`` times a kind's models against (their speed-up's denominator).

    ``label`` names its rows (``Geant4``); ``worker(config, threads, detector, particle)`` times
    it in a fresh process and returns its rows (dicts of :class:`caloforge.bench.BenchRow`).
    ``detector`` is what its rows and the models' rows show as the detector: ``None`` for the
    generator's own calorimeter (which must then be a built-in one to be simulated), a fixed name
    otherwise (``pythia8``); ``energy_gev`` likewise: ``None`` for the bench's energies, else the
    one energy every row is at (jets: pT 1 TeV, ``BenchConfig.jets`` of them per row). ``what``
    is the progress text (``{detector}``, ``{particle}``); ``require`` a ``module:function`` that
    raises when the simulator is not installed, called before anything is timed.
    """

    label: str
    worker: str
    detector: str | None = None
    energy_gev: float | None = None
    what: str = "{detector}, {particle}"
    require: str | None = None

    def check(self) -> None:
        """Raise (one line) when the simulator cannot run here."""
        if self.require is not None:
            resolve(self.require)()

    def timer(self) -> Callable[..., list[dict[str, Any]]]:
        """The bench worker that times this simulator."""
        return resolve(self.worker)


#: Geant4 simulating the generator's own detector (``caloforge simulate``).
GEANT4 = Reference("Geant4", "caloforge.bench:_geant4_worker")
#: Pythia 8 + FastJet jets (``caloforge simulate-jets``): the hard process's pT-hat is centred on 1 TeV.
PYTHIA8 = Reference(
    "Pythia 8 + FastJet",
    "caloforge.bench:_pythia_worker",
    detector="pythia8",
    energy_gev=1000.0,
    what="{particle} jets",
    require="caloforge.jets.pythia:require_generators",
)


@dataclass(frozen=True)
class Kind:
    """What a generator's output is (see the module docstring); ``module:attribute`` references
    name the heavy parts:

    * ``batch`` — the batch class (``len()``, ``concatenate``), e.g. ``caloforge.io:PointShowers``;
    * ``file_test(path) -> bool`` — whether ``path`` is a file of this kind (never raises);
    * ``reader(path, start=0, stop=None)`` — its entries ``start:stop`` as one batch;
    * ``writer(path, detector, first, *, generator, seed, attrs, compression)`` — an atomic writer
      (a context manager with ``write(batch)``) for a file of these batches, ``first`` the first
      batch (a jet file takes its particle count and jet type from it);
    * ``encode(batch) -> dict[str, ndarray]`` and ``decode(arrays) -> batch`` — a batch as plain
      arrays, how Dask pieces travel and wait on disk (:mod:`caloforge.pieces`);
    * ``evaluator(reference, candidates, out_dir, config, progress, overwrite) -> dict`` — what
      ``caloforge evaluate`` runs on files of this kind (``config``: an
      :class:`~caloforge.evaluate.EvaluationConfig`); kinds compared together share one;
    * ``summary(result) -> (table, [(line, markup), ...])`` — what ``caloforge evaluate`` prints
      of its result;
    * ``info(path, detector) -> [(key, value), ...]`` — the rows ``caloforge info`` shows of a file;
    * ``conditions_file(path, conditions, n)`` — optional: a run's conditions read from the first
      ``n`` entries of a file of this kind (``--conditions-file``; jets: their jet features).

    ``noun`` / ``noun_one`` are the words of messages ("wrote 100 jets", "ms/jet");
    ``generates`` the ``caloforge info`` line of a model (``{kind}``, ``{particle}``,
    ``{detector}``); ``calorimeter``: its generators have a detector (``False``: their
    ``detector`` is ``None``, as for jets); ``positions``: its showers are deposits at positions
    (point clouds), which project onto any readout and which fast simulation places as hits;
    ``reference`` the bench's :class:`Reference`.
    """

    name: str
    batch: str
    file_test: str
    reader: str
    writer: str
    encode: str
    decode: str
    evaluator: str
    summary: str
    info: str
    noun: str = "showers"
    noun_one: str = "shower"
    generates: str = "{kind} of {particle} showers in {detector}"
    calorimeter: bool = True
    positions: bool = False
    reference: Reference = GEANT4
    conditions_file: str | None = None

    def part(self, which: str) -> Any:
        """The object a reference field (``batch``, ``writer``, ``evaluator``, …) names."""
        reference = getattr(self, which)
        if reference is None:
            raise ValueError(f"{self.name} files have no {which.replace('_', ' ')}")
        return resolve(reference)

    def batch_type(self) -> type:
        """The batch class."""
        return self.part("batch")

    def is_file(self, path: str | Path) -> bool:
        """Whether ``path`` is a file of this kind."""
        return bool(self.part("file_test")(path))

    def read(self, path: str | Path, start: int = 0, stop: int | None = None) -> Any:
        """Entries ``start:stop`` of a file of this kind, as one batch."""
        return self.part("reader")(path, start=start, stop=stop)

    def open_writer(self, path: str | Path, detector: Any, first: Any, **options: Any) -> Any:
        """An atomic writer of ``path`` for batches like ``first`` (``options``: generator, seed,
        attrs, compression)."""
        writer = self.part("writer")
        if "expected" in options and not _takes(writer, "expected"):
            options = {k: v for k, v in options.items() if k != "expected"}  # an older plug-in
        return writer(path, detector, first, **options)

    def encode_piece(self, batch: Any) -> dict[str, Any]:
        """``batch`` as plain arrays."""
        return self.part("encode")(batch)

    def decode_piece(self, arrays: Mapping[str, Any]) -> Any:
        """The batch :meth:`encode_piece` made ``arrays`` of."""
        return self.part("decode")(arrays)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run this kind's evaluator."""
        return self.part("evaluator")(*args, **kwargs)

    def info_rows(self, path: str | Path, detector: str | None = None) -> list[tuple[str, str]]:
        """The rows ``caloforge info`` shows of the file ``path``."""
        return list(self.part("info")(path, detector))

    def describe_generator(self, generator: Any) -> str:
        """The ``generates`` line of ``caloforge info`` for a model of this kind."""
        detector = getattr(generator.detector, "name", None)
        return self.generates.format(kind=self.name, particle=generator.particle, detector=detector)


_PARTS = "caloforge.kindparts"
#: Point-cloud showers (``caloforge.io``): ``events`` + ``energy`` files.
POINTS = Kind(
    "points",
    batch="caloforge.io:PointShowers",
    file_test=f"{_PARTS}:is_point_file",
    reader="caloforge.io:read_showers",
    writer=f"{_PARTS}:point_writer",
    encode=f"{_PARTS}:encode_points",
    decode=f"{_PARTS}:decode_points",
    evaluator="caloforge.evaluate.showers:evaluate_showers",
    summary="caloforge.evaluate.report:shower_summary",
    info=f"{_PARTS}:point_rows",
    positions=True,
)
#: Voxelised showers (``showers`` + ``incident_energies``): polar voxels, or cell images on a
#: cell-grid detector.
VOXELS = Kind(
    "voxels",
    batch="caloforge.io:VoxelShowers",
    file_test=f"{_PARTS}:is_voxel_file",
    reader="caloforge.io:read_showers",
    writer=f"{_PARTS}:voxel_writer",
    encode=f"{_PARTS}:encode_voxels",
    decode=f"{_PARTS}:decode_voxels",
    evaluator="caloforge.evaluate.showers:evaluate_showers",
    summary="caloforge.evaluate.report:shower_summary",
    info=f"{_PARTS}:voxel_rows",
)
#: Jets as particle clouds (``caloforge.jets.io``, the JetNet layout); no calorimeter.
JETS = Kind(
    "jets",
    batch="caloforge.jets.io:Jets",
    file_test="caloforge.jets.io:is_jet_file",
    reader="caloforge.jets.io:read_jets",
    writer=f"{_PARTS}:jet_writer",
    encode=f"{_PARTS}:encode_jets",
    decode=f"{_PARTS}:decode_jets",
    evaluator="caloforge.evaluate.jets:evaluate_jet_files",
    summary="caloforge.evaluate.report:jet_summary",
    info=f"{_PARTS}:jet_rows",
    noun="jets",
    noun_one="jet",
    generates="{particle} jets as particle clouds",
    calorimeter=False,
    reference=PYTHIA8,
    conditions_file=f"{_PARTS}:jet_conditions",
)
BUILTIN = (POINTS, VOXELS, JETS)

_KINDS: dict[str, Kind] = {}
_LOADED = {"builtin": False}


def register_kind(kind: Kind) -> Kind:
    """Add ``kind`` (replacing one of the same name); returns it."""
    if not isinstance(kind, Kind):
        raise TypeError(f"{kind!r} is not a caloforge.kinds.Kind")
    _load()
    _KINDS[kind.name] = kind
    return kind


def _load() -> None:
    if _LOADED["builtin"]:
        return
    _LOADED["builtin"] = True
    for kind in (*BUILTIN, *plugins("caloforge.kinds", "CALOFORGE_KINDS", "KIND", Kind)):
        _KINDS[kind.name] = kind


def reload() -> None:
    """Forget the registered kinds; the next lookup loads the built-in and plug-in ones anew."""
    _KINDS.clear()
    _LOADED["builtin"] = False


def kinds() -> list[Kind]:
    """Every registered kind (built-in ones first)."""
    _load()
    return list(_KINDS.values())


def get_kind(name: str | Kind) -> Kind:
    """The kind called ``name`` (a :class:`Kind` is returned as it is); an unknown name is a
    one-line :class:`ValueError`."""
    if isinstance(name, Kind):
        return name
    _load()
    if name not in _KINDS:
        raise ValueError(f"unknown output kind '{name}': use one of {', '.join(_KINDS)}")
    return _KINDS[name]


def kind_of_file(path: str | Path) -> Kind | None:
    """The first registered kind whose file test accepts ``path``; ``None`` if none does (a
    missing, unreadable or foreign file)."""
    return next((kind for kind in kinds() if kind.is_file(path)), None)


def fallback_kind() -> Kind:
    """The kind a file that no kind recognises is handed to: ``points``, whose reader (the
    shower reader of :mod:`caloforge.io`) says in one line why it cannot read the file."""
    return get_kind(POINTS.name)


def file_kind(path: str | Path) -> Kind:
    """:func:`kind_of_file`, or :func:`fallback_kind` for a file no kind recognises."""
    return kind_of_file(path) or fallback_kind()


def kind_of_result(result: Mapping[str, Any]) -> Kind:
    """The kind of an evaluation result (``metrics.json``): its ``kind``, or for a shower
    evaluation, whose results carry none, :func:`fallback_kind`."""
    return get_kind(result["kind"]) if "kind" in result else fallback_kind()


def _takes(function: Callable[..., Any], keyword: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``keyword``."""
    params = inspect.signature(function).parameters.values()
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
