"""EPiC training (all three variants): checkpointed, resumable, reproducible from the seed.

* ``fm`` / ``jedi``: one network, AdamW with a one-cycle schedule, EMA of the weights;
  losses :meth:`~caloforge.models.epic.model.EPiCJetModel.fm_loss` /
  :meth:`~caloforge.models.epic.model.EPiCJetModel.jedi_loss`; a validation loss on held-back
  jets with fixed noise.
* ``gan``: least-squares GAN; the critic and the generator take one Adam step each per
  training step (the fake jets have the multiplicities — and, conditional, the jet
  features — of the real batch: the multiplicity comes from the training distribution);
  EMA of the generator.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.jets.io import JET_TYPES, Jets, read_jets
from caloforge.models._distributed import shard
from caloforge.models._placement import rand
from caloforge.models._training import (
    OnDevice,
    RunOptions,
    Term,
    TrainResult,
    combine_terms,
    optimizer_step,
    save_finite_checkpoint,
    seeded,
    train_run,
)
from caloforge.models.epic.checkpoint import CHECKPOINTS
from caloforge.models.epic.config import EPiCConfig
from caloforge.models.epic.model import EPiCJetModel
from caloforge.models.nn.ema import EMA
from caloforge.models.protocol import CheckpointError

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CONDITION_TABLE_ROWS", "load_jets", "train"]

#: Training jets whose features the checkpoint keeps for drawing conditions (about 160 kB).
CONDITION_TABLE_ROWS = 10_000
_MIN_JETS = 20
_FLOW_LR = 1e-3  # the condition flow's Adam, cosine to 1 % over the run


def load_jets(path: str | Path, n_particles: int, max_jets: int | None = None) -> Jets:
    """The first ``max_jets`` jets of a jet file, their ``n_particles`` leading particles
    (the reader refuses NaN, empty jets and files with fewer particles per jet)."""
    jets = read_jets(path, n_particles=n_particles, stop=max_jets)
    jets.jet[:, 3] = (
        jets.multiplicity
    )  # the stored count must be the mask's: sampling builds one from the other
    if len(jets) < _MIN_JETS:
        raise ValueError(f"'{path}' holds {len(jets)} jets: at least {_MIN_JETS} are needed")
    if jets.jet_type not in JET_TYPES:
        raise ValueError(
            f"'{path}' does not say its jet type (no jet_type attribute, no type in its name): add the "
            "attribute or name it like JetNet's files (t.hdf5, g150.hdf5)"
        )
    if (jets.jet[:, 0] <= 0).any() or (jets.jet[:, 2] <= 0).any():
        raise ValueError(f"'{path}': jet pT and mass must be positive (jet_features columns 1 and 3)")
    return jets


class _Trainer(OnDevice):
    """Mutable state of one EPiC training run, and one step of it.

    Data-parallel (every rank draws the global batch and its noise; :func:`combine_terms`
    weights its share), and on a device under bfloat16 autocast where the placement asks for
    it (``amp``: squared-error losses, for the GAN least-squares ones)."""

    distributed = True
    amp = True

    def __init__(self, config: EPiCConfig, jets: Jets) -> None:
        self.config = config
        n = len(jets)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 1))
        n_val = round(config.val_fraction * n) if config.variant != "gan" else 0
        self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        self.particles = torch.from_numpy(jets.particles)
        self.jet = torch.from_numpy(jets.jet)
        rows = self.train_idx[:CONDITION_TABLE_ROWS].numpy()
        self.model = seeded(config.seed, lambda: EPiCJetModel(config, jets.jet_type, jets.jet[np.sort(rows)]))
        self.model.fit_standardisation(self.particles[self.train_idx], self.jet[self.train_idx])
        flow = self.model.condition_flow
        self.opt_flow: torch.optim.Optimizer | None = None
        if flow is not None:  # its own optimiser and noise: the network's run is the same without it
            flow.fit_standardisation(self.jet[self.train_idx])
            self.opt_flow = torch.optim.Adam(flow.parameters(), lr=_FLOW_LR)
            self.sched_flow = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.opt_flow, T_max=config.steps, eta_min=_FLOW_LR / 100
            )
            self.flow_gen = torch.Generator().manual_seed(config.seed + 3)
        self.n_jets = n
        self.gen = torch.Generator().manual_seed(config.seed)
        net = self.model.net
        self.ema = EMA(net, config.ema_decay)
        if config.variant == "gan":
            assert self.model.disc is not None
            betas = (0.5, 0.9)
            self.opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=betas)
            self.opt_d: torch.optim.Optimizer | None = torch.optim.Adam(
                self.model.disc.parameters(), lr=config.lr_disc, betas=betas
            )
            self.sched: Any = None
        else:
            self.opt = torch.optim.AdamW(net.parameters(), lr=config.lr)
            self.opt_d = None
            self.sched = torch.optim.lr_scheduler.OneCycleLR(
                self.opt, max_lr=config.lr, total_steps=config.steps
            )
        self.step, self.skipped, self.elapsed_s = 0, 0, 0.0
        self.last_losses: dict[str, float] = {}

    def device_modules(self) -> list[nn.Module]:
        return [self.model, self.ema.module]

    def _batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, mask = self.model.features(self.place.put(self.particles[idx]))
        return x, mask, self.model.conditions(self.place.put(self.jet[idx]))

    def _loss(self, net_model: EPiCJetModel, idx: Tensor, gen: torch.Generator) -> Tensor:
        x, mask, cond = self._batch(idx)
        if self.config.variant == "fm":
            return net_model.fm_loss(x, mask, cond, gen)
        return net_model.jedi_loss(x, mask, cond, gen)

    def one_step(self) -> list[tuple[str, float | None]]:
        cfg, model = self.config, self.model
        pick = self.train_idx[torch.randint(len(self.train_idx), (cfg.batch_size,), generator=self.gen)]
        model.train()
        x, mask, cond = self._batch(pick)
        draws = model.loss_draws(x, mask, self.gen)  # the global batch's, then this rank's share
        mine = shard(len(x))
        x, mask, cond = x[mine], mask[mine], cond[mine]
        draws = (draws[0][mine], draws[1][mine])
        flow_log = self._flow_step(pick, mine)
        if cfg.variant == "gan":
            return self._gan_step(x, mask, cond, draws) + flow_log
        with self.place.autocast():
            if cfg.variant == "fm":  # a mean over the real particles
                term = Term("loss", model.fm_loss(x, mask, cond, draws=draws).float(), units=mask.sum())
            else:  # a mean over the jets
                term = Term("loss", model.jedi_loss(x, mask, cond, draws=draws).float())
        loss, logged = combine_terms([term], len(x))
        value: float | None = logged[0][1]
        if optimizer_step(loss, model.net, self.opt, cfg.grad_clip):
            self.ema.update(model.net)
        else:
            self.skipped += 1
            value = None
        if self.step + 1 < cfg.steps:  # OneCycleLR refuses a step past its total
            self.sched.step()
        out: list[tuple[str, float | None]] = [("loss", value), *flow_log]
        if len(self.val_idx) and (self.step + 1) % max(cfg.steps // 10, 1) == 0:
            out.append(("val", self.validation_loss()))
        return out

    def _flow_step(self, pick: Tensor, mine: Any) -> list[tuple[str, float | None]]:
        """One update of the condition flow on the batch's jet features (none without a flow)."""
        flow = self.model.condition_flow
        if flow is None or self.opt_flow is None:
            return []
        u = rand((len(pick),), self.flow_gen)[mine]
        jets = self.place.put(self.jet[pick][mine])
        loss, logged = combine_terms([Term("flow", flow.nll(jets, self.place.put(u)))], len(jets))
        value: float | None = logged[0][1]
        if not optimizer_step(loss, flow, self.opt_flow, self.config.grad_clip):
            value = None  # a skipped flow update: logged as such, the network's step stands
        self.sched_flow.step()
        return [("flow", value)]

    def _gan_step(
        self, x: Tensor, mask: Tensor, cond: Tensor, draws: tuple[Tensor, Tensor]
    ) -> list[tuple[str, float | None]]:
        cfg, model = self.config, self.model
        assert model.disc is not None and self.opt_d is not None
        with self.place.autocast():
            fake = model.gan_generate(mask, cond, draws=draws)
            real = ((model.disc(x, mask, cond) - 1) ** 2).mean()
            d_term = Term("critic", (real + (model.disc(fake.detach(), mask, cond) ** 2).mean()).float())
        d_loss, d_logged = combine_terms([d_term], len(x))
        d_value: float | None = d_logged[0][1]
        if not optimizer_step(d_loss, model.disc, self.opt_d, cfg.grad_clip):
            self.skipped += 1
            d_value = None
        with self.place.autocast():
            g_term = Term("generator", ((model.disc(fake, mask, cond) - 1) ** 2).mean().float())
        g_loss, g_logged = combine_terms([g_term], len(x))
        g_value: float | None = g_logged[0][1]
        if optimizer_step(g_loss, model.net, self.opt, cfg.grad_clip):
            self.ema.update(model.net)
        else:
            self.skipped += 1
            g_value = None
        return [("critic", d_value), ("generator", g_value)]

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The loss of the EMA network on the validation jets (fixed noise)."""
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        self.model.eval()
        n = min(len(self.val_idx), 2048)
        total = 0.0
        with self.ema.applied_to(self.model.net):
            for lo in range(0, n, 512):
                idx = self.val_idx[lo : min(lo + 512, n)]
                total += self._loss(self.model, idx, gen).item() * len(idx)
        return total / n

    def state(self) -> dict[str, Any]:
        with self.ema.applied_to(self.model.net) as live:
            inference = copy.deepcopy(self.model.inference_state())  # not views: the live weights come back
        train: dict[str, Any] = {
            "net": live,
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
            "step": self.step,
            "skipped": self.skipped,
            "elapsed_s": self.elapsed_s,
            "n_jets": self.n_jets,
        }
        if self.sched is not None:
            train["sched"] = self.sched.state_dict()
        if self.opt_d is not None and self.model.disc is not None:
            train |= {"disc": self.model.disc.state_dict(), "opt_disc": self.opt_d.state_dict()}
        if self.opt_flow is not None:
            train |= {
                "opt_flow": self.opt_flow.state_dict(),
                "sched_flow": self.sched_flow.state_dict(),
                "flow_gen": self.flow_gen.get_state(),
            }
        return inference | {"train": train}

    def restore(self, state: dict[str, Any], path: Path) -> None:
        tr = state.get("train")
        if tr is None:
            raise CheckpointError(
                f"'{path}' holds no training state (an inference-only file): start a new run"
            )
        if tr["n_jets"] != self.n_jets:
            raise CheckpointError(
                f"'{path}' was trained on {tr['n_jets']} jets, the data file has {self.n_jets}: "
                "resume with the same data (and --max-jets)"
            )
        weights = dict(state["model"])
        self.model.load_state_dict(weights, strict=False)
        self.model.net.load_state_dict(tr["net"])
        self.ema.load_state_dict(tr["ema"])
        self.opt.load_state_dict(tr["opt"])
        if self.sched is not None:
            self.sched.load_state_dict(tr["sched"])
        if self.opt_d is not None and self.model.disc is not None:
            self.model.disc.load_state_dict(tr["disc"])
            self.opt_d.load_state_dict(tr["opt_disc"])
        if self.opt_flow is not None:
            self.opt_flow.load_state_dict(tr["opt_flow"])
            self.sched_flow.load_state_dict(tr["sched_flow"])
            self.flow_gen.set_state(tr["flow_gen"])
        self.gen.set_state(tr["gen"])
        self.step, self.skipped, self.elapsed_s = int(tr["step"]), int(tr["skipped"]), float(tr["elapsed_s"])

    def save(self, path: Path) -> None:
        save_finite_checkpoint(self.state(), path)


def train(
    config: EPiCConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    max_jets: int | None = None,
    **run: Unpack[RunOptions],
) -> TrainResult:
    """Train the EPiC ``config.variant`` on the jet file ``data_path`` (its first ``max_jets``,
    their ``config.n_particles`` leading particles); checkpoint in ``out_dir``.

    Checkpoints every ``checkpoint_minutes``, on Ctrl-C and at the end; ``resume=True``
    continues exactly; ``out_dir/train_log.jsonl`` gets the losses.
    """
    load = partial(load_jets, n_particles=config.n_particles, max_jets=max_jets)
    return train_run(config, data_path, out_dir, CHECKPOINTS.check_state, load, _Trainer, **run)
