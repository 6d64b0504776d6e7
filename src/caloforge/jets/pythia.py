"""Reference jets from real generators: Pythia 8 events, anti-kT R = 0.8 jets with FastJet (SPEC 6.9).

``t`` jets come from tt̄ production at 13 TeV (``Top:gg2ttbar``, ``Top:qqbar2ttbar``) with
the W bosons forced to quarks, each jet matched within ΔR < 0.8 to a top quark of the hard
process; ``g`` and ``q`` jets from QCD 2 → 2 (``HardQCD:all``), matched to an outgoing gluon
or light quark (u, d, s). The hard process has its pT-hat in a window around 1 TeV
(950–1050 GeV); a jet is kept when its pT ≥ 800 GeV and |η| < 2.5. Its constituents are all
visible final-state particles (no detector), sorted by pT; the leading ``n_particles`` are
stored (:mod:`caloforge.jets.io`).

A run is made of pieces of :data:`JETS_PER_PIECE` jets, piece ``k`` from its own Pythia seed
(:func:`piece_seed`), so any split over worker processes gives the same file and an
interrupted run continues with ``resume`` (:mod:`caloforge.pieces`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.engines import LocalEngine
from caloforge.jets.io import JetFileError, Jets, JetWriter

__all__ = [
    "JETS_PER_PIECE",
    "PROCESSES",
    "JetSimulationConfig",
    "piece_seed",
    "require_generators",
    "simulate_jets",
    "simulate_piece",
]

JETS_PER_PIECE = 250
#: Pythia settings of each jet type's hard process (beams and the pT-hat window come on top).
PROCESSES: dict[str, tuple[str, ...]] = {
    "t": ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "24:onMode = off", "24:onIfAny = 1 2 3 4 5"),
    "g": ("HardQCD:all = on",),
    "q": ("HardQCD:all = on",),
}
#: PDG ids a jet of each type is matched to (the hard process's outgoing partons).
_MATCH = {"t": (6,), "g": (21,), "q": (1, 2, 3)}
_MAX_PYTHIA_SEED = 900_000_000


@dataclass(frozen=True)
class JetSimulationConfig:
    """What a jet simulation makes (all of it is in the output's attributes and resume manifest)."""

    jet_type: str = "t"
    n_particles: int = 150
    sqrt_s_gev: float = 13000.0
    pt_hat_gev: tuple[float, float] = (950.0, 1050.0)
    min_jet_pt_gev: float = 800.0
    max_abs_eta: float = 2.5
    radius: float = 0.8
    match_radius: float = 0.8

    def __post_init__(self) -> None:
        if self.jet_type not in PROCESSES:
            raise JetFileError(
                f"unknown jet type '{self.jet_type}': caloforge simulates {', '.join(PROCESSES)}"
            )
        if not 1 <= self.n_particles <= 1000:
            raise ValueError(f"--particles must be 1-1000, got {self.n_particles}")

    def attrs(self) -> dict[str, Any]:
        """The file attributes of this configuration."""
        return {
            "process": "pp -> ttbar" if self.jet_type == "t" else "pp -> jj (HardQCD)",
            "sqrt_s_gev": self.sqrt_s_gev,
            "pt_hat_min_gev": self.pt_hat_gev[0],
            "pt_hat_max_gev": self.pt_hat_gev[1],
            "min_jet_pt_gev": self.min_jet_pt_gev,
            "max_abs_eta": self.max_abs_eta,
            "jet_algorithm": f"anti-kt R={self.radius}",
            "generator_versions": _versions(),
        }


def require_generators() -> tuple[Any, Any]:
    """The ``pythia8mc`` and ``fastjet`` modules, or an error naming the extra to install."""
    try:
        import fastjet
        import pythia8mc
    except ImportError as exc:
        raise ImportError(
            f"simulating jets needs Pythia 8 and FastJet ({exc.name} is missing): "
            "pip install 'caloforge[jets]'"
        ) from None
    return pythia8mc, fastjet


def _versions() -> str:
    from importlib.metadata import version

    return f"pythia8mc {version('pythia8mc')}, fastjet {version('fastjet')}"


def piece_seed(seed: int, piece: int) -> int:
    """Pythia's seed (1 … 900,000,000) for piece ``piece`` of a run with ``seed``.

    >>> piece_seed(1, 0) == piece_seed(1, 0) != piece_seed(1, 1)
    True
    """
    state = np.random.SeedSequence([seed % 2**63, piece]).generate_state(1, np.uint64)[0]
    return int(state % _MAX_PYTHIA_SEED) + 1


def _pythia(config: JetSimulationConfig, seed: int) -> Any:
    pythia8mc, _ = require_generators()
    pythia = pythia8mc.Pythia("", False)
    settings = (
        f"Beams:eCM = {config.sqrt_s_gev}",
        *PROCESSES[config.jet_type],
        f"PhaseSpace:pTHatMin = {config.pt_hat_gev[0]}",
        f"PhaseSpace:pTHatMax = {config.pt_hat_gev[1]}",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
        "Next:numberCount = 0",
        "Print:quiet = on",
    )
    for line in settings:
        if not pythia.readString(line):
            raise RuntimeError(f"Pythia refused the setting '{line}'")
    if not pythia.init():
        raise RuntimeError("Pythia failed to initialise")
    return pythia


def _wrap(phi: np.ndarray) -> np.ndarray:
    """Angles wrapped to (-pi, pi]."""
    return np.pi - np.mod(np.pi - phi, 2 * np.pi)


def _constituent_features(jet: Any, n_particles: int) -> np.ndarray:
    """``(n_particles, 4)`` ``eta_rel, phi_rel, pt_rel, mask`` of a FastJet jet's leading constituents."""
    cons = jet.constituents()
    kin = np.array([(c.pt(), c.eta(), c.phi()) for c in cons], np.float64)
    kin = kin[np.argsort(-kin[:, 0], kind="stable")][:n_particles]
    out = np.zeros((n_particles, 4), np.float32)
    k = len(kin)
    out[:k, 0] = kin[:, 1] - jet.eta()
    out[:k, 1] = _wrap(kin[:, 2] - jet.phi())
    out[:k, 2] = kin[:, 0] / jet.pt()
    out[:k, 3] = 1.0
    return out


def _event_jets(
    pythia: Any, config: JetSimulationConfig, definition: Any, fastjet: Any
) -> tuple[list[Any], Any]:
    """The jets of the current event that pass the cuts and match a hard parton of the type,
    with their cluster sequence (which must outlive any use of the jets' constituents)."""
    event, process = pythia.event, pythia.process
    particles = [
        fastjet.PseudoJet(p.px(), p.py(), p.pz(), p.e())
        for p in (event[i] for i in range(event.size()))
        if p.isFinal() and p.isVisible()
    ]
    partons = [
        (process[i].eta(), process[i].phi())
        for i in range(process.size())
        if process[i].status() in (-22, -23, 23, 22) and abs(process[i].id()) in _MATCH[config.jet_type]
    ]
    if not partons or not particles:
        return [], None
    sequence = fastjet.ClusterSequence(particles, definition)
    kept = []
    for jet in sequence.inclusive_jets(config.min_jet_pt_gev):
        if abs(jet.eta()) >= config.max_abs_eta:
            continue
        d_eta = np.array([eta - jet.eta() for eta, _ in partons])
        d_phi = _wrap(np.array([phi - jet.phi() for _, phi in partons]))
        if np.min(np.hypot(d_eta, d_phi)) < config.match_radius:
            kept.append(jet)
    return kept, sequence


def simulate_piece(config: JetSimulationConfig, n_jets: int, seed: int) -> Jets:
    """``n_jets`` jets from one Pythia run with ``seed`` (a pure function of the arguments)."""
    _, fastjet = require_generators()
    pythia = _pythia(config, seed)
    definition = fastjet.JetDefinition(fastjet.antikt_algorithm, config.radius)
    particles, features = [], []
    tries = 0
    while len(particles) < n_jets:
        tries += 1
        if tries > 50 * n_jets + 100:
            raise RuntimeError(
                f"Pythia made too few {config.jet_type} jets ({len(particles)} in {tries} events)"
            )
        if not pythia.next():
            continue
        jets, _sequence = _event_jets(pythia, config, definition, fastjet)
        for jet in jets[: n_jets - len(particles)]:
            pf = _constituent_features(jet, config.n_particles)
            particles.append(pf)
            n_const = len(jet.constituents())
            features.append((jet.pt(), jet.eta(), jet.m(), min(n_const, config.n_particles)))
    return Jets(np.stack(particles), np.array(features, np.float32), config.jet_type)


def _worker_start() -> None:
    from caloforge.safety import worker_setup

    worker_setup()


def _run_piece(job: tuple[JetSimulationConfig, int, int, int]) -> tuple[int, Jets, float]:
    config, first, count, seed = job
    start = time.perf_counter()
    jets = simulate_piece(config, count, seed)
    return first, jets, time.perf_counter() - start


def simulate_jets(
    out: str | Path,
    n_jets: int,
    config: JetSimulationConfig | None = None,
    *,
    seed: int = 0,
    workers: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Simulate ``n_jets`` jets into ``out`` (atomically), in pieces of :data:`JETS_PER_PIECE`
    spread over ``workers`` processes; ``resume`` continues an interrupted run. Returns a
    summary (jets, seconds, ms per jet)."""
    from caloforge.pieces import PieceStore, pieces_dir
    from caloforge.safety import check_count, check_stop, output_lock, refuse_existing, stop_signals

    config = config or JetSimulationConfig()
    out = Path(out)
    if n_jets < 1:
        raise ValueError(f"-n must be at least 1, got {n_jets}")
    check_count(n_jets, 64, "-n", "the bookkeeping of the jets")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    require_generators()
    if not resume:
        refuse_existing(out, overwrite)
    elif out.exists() and not pieces_dir(out).exists():
        raise FileExistsError(f"'{out}' is complete (no unfinished pieces to resume): nothing to do")
    manifest = {"kind": "jets", "seed": seed, "n_jets": n_jets, "jets_per_piece": JETS_PER_PIECE}
    manifest |= {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}
    starts = list(range(0, n_jets, JETS_PER_PIECE))
    counts = {s: min(JETS_PER_PIECE, n_jets - s) for s in starts}
    t0 = time.perf_counter()
    cpu_seconds = 0.0
    with output_lock(out), stop_signals(deferred=True):
        store = PieceStore.open(out, manifest, resume=resume, overwrite=overwrite)
        finished = store.finished()
        todo = [
            (config, s, counts[s], piece_seed(seed, s // JETS_PER_PIECE))
            for s in starts
            if finished.get(s) != counts[s]
        ]
        done = sum(c for s, c in counts.items() if finished.get(s) == c)
        if progress is not None:
            progress(done, n_jets)

        def keep(first: int, jets: Jets, seconds: float) -> None:
            nonlocal done, cpu_seconds
            check_stop()
            store.save(first, len(jets), {"particles": jets.particles, "jet": jets.jet})
            done += len(jets)
            cpu_seconds += seconds
            if progress is not None:
                progress(done, n_jets)

        if workers == 1:
            for job in todo:
                keep(*_run_piece(job))
        elif todo:
            # each piece is kept as soon as it is done; Ctrl-C or an error drops the rest
            with LocalEngine(workers, _worker_start) as pool:
                for result in pool.imap_unordered(_run_piece, todo):
                    keep(*result)
        attrs = config.attrs() | {"n_jets": n_jets}
        with JetWriter(out, config.n_particles, config.jet_type, generator="pythia8+fastjet", seed=seed,
                       attrs=attrs, expected=n_jets) as writer:  # fmt: skip
            for s in starts:
                arrays = store.load(s)
                writer.write(Jets(arrays["particles"], arrays["jet"], config.jet_type))
        store.remove()
    seconds = time.perf_counter() - t0
    made = sum(c for s, c in counts.items() if finished.get(s) != c)
    return {
        "n_jets": n_jets,
        "seconds": seconds,
        "cpu_ms_per_jet": 1000 * cpu_seconds / max(made, 1),
    }
