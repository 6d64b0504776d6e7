"""The per-process Geant4 instance behind :func:`caloforge.simulate.geant4.run_showers`.

Importing this module imports geant4_pybind; ``geant4.get_engine`` prepares the
data environment for the requested physics first. A direct import (documentation
tools, doctest collection) falls back to the data-free set-up so that
geant4_pybind does not try to download data sets.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from caloforge.simulate._build import load_bridge
from caloforge.simulate._config import EngineConfig, EngineStats, Trigger
from caloforge.simulate.fastsim import front_face_entry
from caloforge.simulate.geant4 import prepare_environment
from caloforge.simulate.geometry import Geometry

if "GEANT4_DATA_DIR" not in os.environ:
    prepare_environment("datafree")

import geant4_pybind as g4  # only after GEANT4_DATA_DIR is set (see above)

PRODUCTION_CUT_MM = 0.7
N_COLUMNS = 4  # x_mm, y_mm, layer, edep_MeV (see _config.HIT_COLUMNS)
_WORLD_MARGIN_MM = 10.0
_SILENCING_COMMANDS = (
    "/control/verbose 0",
    "/run/verbose 0",
    "/event/verbose 0",
    "/tracking/verbose 0",
    "/process/verbose 0",
    "/process/em/verbose 0",
    "/process/eLoss/verbose 0",
)


def _active_volume_name(layer: int) -> str:
    return f"caloforge_active_{layer:03d}"


# --- step collectors ---------------------------------------------------------


class _Collector:
    """Records (x, y, layer, edep) of energy deposits in the active layers."""

    def attach(self, detector: _Detector, volume: g4.G4LogicalVolume, layer: int) -> None:
        """Make ``volume`` (active layer ``layer``) sensitive."""

    def begin_event(self) -> None:
        """Forget the previous event's deposits."""

    def end_event(self) -> np.ndarray:
        """Return this event's deposits as an (n, 4) float64 array."""
        return np.empty((0, N_COLUMNS))


class _CppCollector(_Collector):
    """Steps are collected by the C++ bridge; Python only copies the buffer per event."""

    def __init__(self, bridge: ctypes.CDLL) -> None:
        self._bridge = bridge

    def attach(self, detector: _Detector, volume: g4.G4LogicalVolume, layer: int) -> None:
        code = self._bridge.cf_attach_collector(volume.GetName().encode(), layer)
        if code != 0:
            raise RuntimeError(f"C++ step collector could not be attached (code {code})")

    def begin_event(self) -> None:
        self._bridge.cf_clear_hits()

    def end_event(self) -> np.ndarray:
        n = int(self._bridge.cf_hit_count())
        if n == 0:
            return np.empty((0, N_COLUMNS))
        view = np.ctypeslib.as_array(self._bridge.cf_hit_data(), shape=(n, N_COLUMNS))
        return view.copy()


class _PySensitiveDetector(g4.G4VSensitiveDetector):
    """Reference implementation of the C++ collector through geant4_pybind's accessors."""

    def __init__(self, name: str, layer: int, sink: list[tuple[float, float, float, float]]) -> None:
        super().__init__(name)
        self._layer = float(layer)
        self._sink = sink

    def ProcessHits(self, step: g4.G4Step, history: g4.G4TouchableHistory) -> bool:
        edep = step.GetTotalEnergyDeposit()
        if not edep > 0.0:
            return False
        pre = step.GetPreStepPoint().GetPosition()
        post = step.GetPostStepPoint().GetPosition()
        self._sink.append((0.5 * (pre.x + post.x), 0.5 * (pre.y + post.y), self._layer, edep))
        return True


class _PythonCollector(_Collector):
    """Per-step Python callback (slow; kept to cross-check the C++ collector)."""

    def __init__(self) -> None:
        self._hits: list[tuple[float, float, float, float]] = []
        self._detectors: list[_PySensitiveDetector] = []

    def attach(self, detector: _Detector, volume: g4.G4LogicalVolume, layer: int) -> None:
        sd = _PySensitiveDetector(f"caloforge_py_{layer:03d}", layer, self._hits)
        g4.G4SDManager.GetSDMpointer().AddNewDetector(sd)
        detector.SetSensitiveDetector(volume, sd)
        self._detectors.append(sd)

    def begin_event(self) -> None:
        self._hits.clear()

    def end_event(self) -> np.ndarray:
        return np.array(self._hits, dtype=np.float64).reshape(-1, N_COLUMNS)


# --- Geant4 user classes -------------------------------------------------------


class _Detector(g4.G4VUserDetectorConstruction):
    """Builds the planar stack and hands the active layers to the collector."""

    def __init__(self, geometry: Geometry, collector: _Collector) -> None:
        super().__init__()
        self._geometry = geometry
        self._collector = collector
        # geant4_pybind deletes C++ objects whose Python wrappers are garbage collected.
        self._keep: list[object] = []
        self._active: list[g4.G4LogicalVolume] = []

    def _place(
        self,
        mother: g4.G4LogicalVolume,
        name: str,
        material: g4.G4Material,
        front_mm: float,
        thickness_mm: float,
        copy: int,
    ) -> g4.G4LogicalVolume:
        half_xy = self._geometry.half_size_mm * g4.mm
        solid = g4.G4Box(name, half_xy, half_xy, 0.5 * thickness_mm * g4.mm)
        volume = g4.G4LogicalVolume(solid, material, name)
        centre = g4.G4ThreeVector(0.0, 0.0, (front_mm + 0.5 * thickness_mm) * g4.mm)
        placement = g4.G4PVPlacement(None, centre, volume, name, mother, False, copy)
        self._keep += [solid, volume, placement]
        return volume

    def Construct(self) -> g4.G4VPhysicalVolume:
        geo = self._geometry
        nist = g4.G4NistManager.Instance()
        vacuum = nist.FindOrBuildMaterial("G4_Galactic")
        active = nist.FindOrBuildMaterial(geo.active_material)
        absorber = nist.FindOrBuildMaterial(geo.absorber_material)
        if active is None or absorber is None:
            raise ValueError(f"unknown NIST material {geo.active_material!r} or {geo.absorber_material!r}")
        # Nothing outside the stack can scatter particles back, so a world just
        # larger than the layers loses nothing.
        half_xy = geo.half_size_mm * g4.mm + _WORLD_MARGIN_MM
        half_z = (max(abs(geo.gun_depth_mm), abs(geo.back_mm)) + _WORLD_MARGIN_MM) * g4.mm
        world_solid = g4.G4Box("caloforge_world", half_xy, half_xy, half_z)
        world = g4.G4LogicalVolume(world_solid, vacuum, "caloforge_world")
        world_placement = g4.G4PVPlacement(None, g4.G4ThreeVector(), world, "caloforge_world", None, False, 0)
        self._keep += [world_solid, world, world_placement]

        layers = zip(geo.layer_depths_mm, geo.absorber_thicknesses_mm, strict=True)
        for i, (depth, t_abs) in enumerate(layers):
            if t_abs > 0:
                self._place(world, f"caloforge_absorber_{i:03d}", absorber, depth - t_abs, t_abs, i)
            name = _active_volume_name(i)
            self._active.append(self._place(world, name, active, depth, geo.active_thickness_mm, i))
        return world_placement

    def ConstructSDandField(self) -> None:
        for layer, volume in enumerate(self._active):
            self._collector.attach(self, volume, layer)


class _DataFreeEm(g4.G4VPhysicsConstructor):
    """Standard-like EM physics for gamma/e-/e+ built only from analytic models."""

    def __init__(self, bridge: ctypes.CDLL) -> None:
        super().__init__("caloforge_datafree_em")
        self._bridge = bridge
        self.failures = -1  # set by ConstructProcess

    def ConstructParticle(self) -> None:
        g4.G4Gamma.GammaDefinition()
        g4.G4Electron.ElectronDefinition()
        g4.G4Positron.PositronDefinition()

    def ConstructProcess(self) -> None:
        # Errors are reported after Initialize(): raising through Geant4 is unsafe.
        self.failures = int(self._bridge.cf_register_datafree_em())


class _DataFreePhysicsList(g4.G4VModularPhysicsList):
    """Transportation (added by the base class) plus :class:`_DataFreeEm`."""

    def __init__(self, bridge: ctypes.CDLL) -> None:
        super().__init__()
        self.SetVerboseLevel(0)
        self.em = _DataFreeEm(bridge)
        self.RegisterPhysics(self.em)


class _PrimaryGenerator(g4.G4VUserPrimaryGeneratorAction):
    """The current event's primaries: one vertex per row of ``primaries`` (PRIMARY_COLUMNS)."""

    def __init__(self) -> None:
        super().__init__()
        self.gun = g4.G4ParticleGun(1)
        self.primaries: list[list[float]] = []

    def GeneratePrimaries(self, event: g4.G4Event) -> None:
        gun = self.gun
        for energy, x, y, z, dx, dy, dz in self.primaries:
            gun.SetParticleEnergy(energy * g4.GeV)
            gun.SetParticlePosition(g4.G4ThreeVector(x * g4.mm, y * g4.mm, z * g4.mm))
            gun.SetParticleMomentumDirection(g4.G4ThreeVector(dx, dy, dz))
            gun.GeneratePrimaryVertex(event)


class _TriggerStacking(g4.G4UserStackingAction):
    """Fast-simulation trigger: a new track that :func:`~caloforge.simulate.fastsim.front_face_entry`
    and the trigger select is killed and recorded (ENTRY_COLUMNS); every other one is tracked.

    Called once per new track; in a fast-simulated event that is only the primaries."""

    def __init__(self, trigger: Trigger, geometry: Geometry) -> None:
        super().__init__()
        self._names = frozenset(trigger.particles)
        self._min_mev = trigger.min_energy_gev * 1000.0
        self._front = geometry.front_mm
        self._half = geometry.half_size_mm
        self.entries: list[tuple[float, ...]] = []

    def ClassifyNewTrack(self, track: g4.G4Track) -> g4.G4ClassificationOfNewTrack:
        energy = track.GetKineticEnergy()  # MeV, Geant4's unit
        if energy >= self._min_mev and track.GetDefinition().GetParticleName() in self._names:
            p, d = track.GetPosition(), track.GetMomentumDirection()
            entry = front_face_entry((p.x, p.y, p.z), (d.x, d.y, d.z), self._front, self._half)
            if entry is not None:
                self.entries.append((energy / 1000.0, entry[0], entry[1], d.x, d.y, d.z))
                return g4.G4ClassificationOfNewTrack.fKill
        return g4.G4ClassificationOfNewTrack.fUrgent


# --- engine --------------------------------------------------------------------


@contextlib.contextmanager
def _captured_output(path: Path) -> Iterator[TextIO]:
    """Send G4cout/G4cerr (routed by geant4_pybind to sys.stdout/stderr) to ``path``.

    A file rather than memory, line-buffered, so that the messages survive when a
    fatal G4Exception aborts the process.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "w", buffering=1) as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        yield log


class Engine:
    """One Geant4 run manager per process, built for one :class:`EngineConfig`."""

    def __init__(self, config: EngineConfig, geant4_library: Path, log_path: Path | None) -> None:
        """Build and initialise Geant4; its start-up output goes to ``log_path`` if given."""
        self.config = config
        self.stats = EngineStats()
        start = time.perf_counter()
        if log_path is None:
            self._build(geant4_library)
        else:
            try:
                with _captured_output(log_path):
                    self._build(geant4_library)
            except Exception as exc:
                log = log_path.read_text(errors="replace")
                raise RuntimeError(f"Geant4 initialisation failed: {exc}\n{log}") from exc
            log_path.unlink(missing_ok=True)
        self.stats.init_seconds = time.perf_counter() - start

    def _build(self, geant4_library: Path) -> None:
        config = self.config
        needs_bridge = config.collector == "cpp" or config.physics == "datafree"
        bridge = load_bridge(geant4_library, g4.G4Version) if needs_bridge else None

        self.collector: _Collector
        if config.collector == "cpp":
            assert bridge is not None
            self.collector = _CppCollector(bridge)
        elif config.collector == "python":
            self.collector = _PythonCollector()
        else:
            self.collector = _Collector()

        self.run_manager = g4.G4RunManager()
        ui = g4.G4UImanager.GetUIpointer()
        for command in _SILENCING_COMMANDS:
            ui.ApplyCommand(command)
        g4.G4EmParameters.Instance().SetVerbose(0)
        self.run_manager.SetVerboseLevel(0)

        self.detector = _Detector(config.geometry, self.collector)
        self.run_manager.SetUserInitialization(self.detector)
        em: _DataFreeEm | None = None
        if config.physics == "datafree":
            assert bridge is not None
            physics_list = _DataFreePhysicsList(bridge)
            em = physics_list.em
        else:
            physics_list = g4.FTFP_BERT()
        self.physics_list = physics_list
        self.run_manager.SetUserInitialization(physics_list)
        self.generator = _PrimaryGenerator()
        self.run_manager.SetUserAction(self.generator)
        self.stacking: _TriggerStacking | None = None
        if config.trigger is not None:
            self.stacking = _TriggerStacking(config.trigger, config.geometry)
            self.run_manager.SetUserAction(self.stacking)

        self.run_manager.Initialize()
        if em is not None and em.failures != 0:
            raise RuntimeError(f"registering the data-free EM processes failed ({em.failures})")
        # SetDefaultCutValue() does not reach the kernel through geant4_pybind.
        ui.ApplyCommand(f"/run/setCut {PRODUCTION_CUT_MM} mm")
        # A run without events does the run initialisation (physics tables) up front.
        self.run_manager.BeamOn(0)

    def events(
        self, particle: str, primaries: Sequence[np.ndarray], seeds: Sequence[Sequence[int]]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Simulate one event per entry of ``primaries`` (each ``(k, 7)``, PRIMARY_COLUMNS),
        reseeding the engine with ``seeds[k]`` first; yields ``(hits, entries)`` per event:
        the deposits ``(n, 4)`` and the tracks the fast-simulation trigger took ``(m, 6)``."""
        definition = g4.G4ParticleTable.GetParticleTable().FindParticle(particle)
        if definition is None:
            raise ValueError(f"Geant4 does not know the particle {particle!r}")
        self.generator.gun.SetParticleDefinition(definition)
        stats = self.stats
        stacking = self.stacking
        for rows, event_seeds in zip(primaries, seeds, strict=True):
            t0 = time.perf_counter()
            # The engine state is fully reset from 4 x 32 bit seeds (the count must be
            # passed, otherwise MixMax uses only two of them); the list is 0-terminated.
            g4.HepRandom.setTheSeeds([*event_seeds, 0], len(event_seeds))
            self.generator.primaries = np.asarray(rows, np.float64).reshape(-1, 7).tolist()
            if stacking is not None:
                stacking.entries = []
            self.collector.begin_event()
            t1 = time.perf_counter()
            self.run_manager.BeamOn(1)
            t2 = time.perf_counter()
            hits = self.collector.end_event()
            entries = np.array(stacking.entries if stacking is not None else [], np.float64).reshape(-1, 6)
            t3 = time.perf_counter()
            stats.events += 1
            stats.steps += len(hits)
            stats.geant4_seconds += t2 - t1
            stats.overhead_seconds += (t1 - t0) + (t3 - t2)
            yield hits, entries
