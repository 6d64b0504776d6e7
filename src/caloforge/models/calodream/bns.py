"""Training bespoke non-stationary (BNS) solvers for a frozen CaloDREAM shape network."""

from __future__ import annotations

from pathlib import Path

import torch

from caloforge.models._training import (
    Progress,
)
from caloforge.models.calodream.checkpoint import read_state
from caloforge.models.calodream.data import load_voxel_data
from caloforge.models.calodream.generation import (
    place,
    shape_condition,
    shape_noise,
    shape_velocity,
)
from caloforge.models.calodream.model import (
    CHECKPOINT_FORMAT,
    CaloDream,
)
from caloforge.models.calodream.solver import SolverSpec
from caloforge.models.checkpoint import checkpoint_file, save_checkpoint
from caloforge.models.protocol import CheckpointError
from caloforge.odesolvers import (
    LOSS_MODES,
    BNSSolver,
    train_bns,
)

# --------------------------------------------------------------------------- BNS solvers


def train_solver(
    model: CaloDream,
    data_path: str | Path,
    n_steps: int,
    *,
    loss: str = "global",
    n_train: int = 256,
    batch_size: int = 16,
    iterations: int = 150,
    lr: float = 5e-3,
    rtol: float = 1e-4,
    seed: int = 0,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> BNSSolver:
    """Train an ``n_steps`` bespoke non-stationary solver for ``model``'s frozen shape network.

    Conditions (incident and layer energies) come from the first ``n_train`` showers of
    ``data_path``; references are dopri5 solutions (:func:`caloforge.odesolvers.train_bns`,
    with the shape network's field for each shower's condition). ``loss`` is ``global`` (end
    points) or ``local`` (each step from the reference trajectory). The solver starts as
    Euler; of the iterates scored on all ``n_train`` showers (the start, every 25th, the
    last), the one with the lowest loss wins.

    The shape network, the reference solves and the solver's training run on ``device`` (the
    model is moved there; None: where it is); the noise and the minibatches are drawn on the
    host, as in generation. The solver comes back on the CPU.
    """
    if model.part != "shape":
        raise ValueError(f"BNS solvers are trained for shape models; this is a {model.part} model")
    if loss not in LOSS_MODES:
        raise ValueError(f"unknown BNS loss '{loss}': use {' or '.join(LOSS_MODES)}")
    data = load_voxel_data(data_path, with_fractions=False, max_showers=n_train, min_showers=1)
    on = model.standard.mean.device if device is None else torch.device(device)
    place(model, on)
    cond = shape_condition(model, data.energy.to(on), data.u.to(on))

    def on_step(iteration: int, total: int, value: float) -> None:
        if progress is not None:
            progress("train", iteration, total, info=f"loss {value:.3g}")

    def on_reference(done: int, total: int) -> None:
        if progress is not None:
            progress("reference", done, total)

    solver = train_bns(
        lambda index: shape_velocity(model, cond[index]),
        lambda n, gen: shape_noise(model, n, gen),
        n_steps,
        mode=loss,
        n_train=len(cond),
        batch=batch_size,
        iterations=iterations,
        lr=lr,
        seed=seed,
        reference_rtol=rtol,
        conditional=True,
        progress=on_step,
        reference_progress=on_reference,
    )
    return solver.cpu()


def save_solver(model_path: str | Path, solver: BNSSolver, out: str | Path | None = None) -> Path:
    """Store ``solver`` as the shape sampler of the checkpoint ``model_path`` (or of a copy at ``out``).

    The file is replaced atomically; training state in it is kept, so the run can still resume.
    """
    path = checkpoint_file(model_path)
    state = read_state(path)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("part") != "shape":
        raise CheckpointError(f"'{path}' is not a CaloDREAM shape model")
    spec = SolverSpec("bns", solver.n_steps, solver.to_dict())
    state["sampler"] = dict(state["sampler"]) | {"shape": spec.to_dict()}
    state["calibration"] = None  # fitted with the previous sampler: refit with calibrate
    target = Path(out) if out is not None else path
    save_checkpoint(state, target)
    return target
