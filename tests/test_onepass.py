"""The one-pass generator (caloforge.models.onepass) on a toy model: planning, batches, refusals."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from caloforge.detector import get_detector
from caloforge.io import VoxelShowers
from caloforge.models.bibae import BIBAEConfig
from caloforge.models.bibae.generation import BIBAEGenerator
from caloforge.models.caloinn import CaloINNConfig
from caloforge.models.caloinn.generation import CaloINNGenerator
from caloforge.models.l2lflows import L2LFlowsConfig
from caloforge.models.l2lflows.generation import L2LFlowsGenerator
from caloforge.models.onepass import OnePassGenerator, one_pass_batch
from caloforge.models.protocol import (
    Condition,
    GenerationError,
    GenerationRequest,
    SamplerInfo,
    batch_seed,
)

DET = get_detector("calochallenge-ds2")


@dataclass(frozen=True)
class _Config:
    spread: float = 1.5


class _Toy:
    """Cells = energy × (1 + spread · N(0, 1)) in 5 cells; records what it was called with."""

    detector = DET
    energy_range = (2.0, 80.0)
    complete = True

    def __init__(self, spread: float = 1.5) -> None:
        self.config = _Config(spread)
        self.calls: list[tuple[torch.Tensor, float]] = []
        self.devices: list[str] = []

    def to(self, device: str) -> "_Toy":
        self.devices.append(device)
        return self

    def sample(self, energies: torch.Tensor, gen: torch.Generator, option: float) -> torch.Tensor:
        self.calls.append((energies, option))
        noise = torch.randn(len(energies), 5, generator=gen)
        return energies[:, None] * (1 + option * noise)


class _ToyGenerator(OnePassGenerator):
    family = "toy"
    label = "toy-onepass"
    particle = "gamma"
    name = "Toy"
    sampler = "once"
    how = "it draws once"
    option = "spread"


ENERGY = {"energy": np.array([3.0, 10.0, 70.0])}


def test_generator_states_the_models_facts():
    model = _Toy()
    gen = _ToyGenerator(model)
    assert gen.output == "voxels" and gen.detector is DET and gen.complete is True and gen.path is None
    assert gen.conditions == (Condition("energy", "GeV", 2.0, 80.0),)


def test_plan_defaults_to_the_models_option_and_takes_another():
    gen = _ToyGenerator(_Toy(spread=1.5))
    plan = gen.plan(GenerationRequest())
    assert plan.sampler == SamplerInfo("once", 1, 1) and plan.precision == "float32"
    assert plan.device == "cpu"
    assert plan.options == {"spread": 1.5} and plan.attrs == {"spread": 1.5}
    assert not plan.allow_extrapolation
    explicit = GenerationRequest(
        sampler="once", n_steps=1, precision="float32", allow_extrapolation=True, options={"spread": 0.25}
    )
    plan = gen.plan(explicit)
    assert plan.options == {"spread": 0.25} and plan.allow_extrapolation
    assert gen.plan(GenerationRequest(device="cuda:1")).device == "cuda:1"  # checked, not run here


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (GenerationRequest(sampler="heun"), r"unknown sampler 'heun' for Toy: it draws once \(once\)"),
        (GenerationRequest(n_steps=2), "--steps 2: Toy samples in one pass"),
        (GenerationRequest(precision="float16"), "--precision float16: Toy models run in float32"),
        (GenerationRequest(options={"temperature": 1.0}), r"option 'temperature' \(it takes spread\)"),
        (GenerationRequest(options={"spread": 0.0}), r"spread must lie in \(0, 10\), got 0.0"),
        (GenerationRequest(options={"spread": 10.0}), r"spread must lie in \(0, 10\), got 10.0"),
        (GenerationRequest(options={"spread": float("nan")}), r"must lie in \(0, 10\), got nan"),
    ],
)
def test_plan_refuses(request_, match):
    with pytest.raises(GenerationError, match=match):
        _ToyGenerator(_Toy()).plan(request_)


def test_a_bad_default_option_is_refused_too():
    with pytest.raises(GenerationError, match="spread must lie in"):
        _ToyGenerator(_Toy(spread=-1.0)).plan(GenerationRequest())


def test_batches_are_their_own_seeded_streams():
    model = _Toy()
    gen = _ToyGenerator(model)
    plan = gen.plan(GenerationRequest(options={"spread": 0.5}))
    a = gen.generate_batch(ENERGY, plan, seed=4, index=2)
    assert isinstance(a, VoxelShowers) and a.voxels.shape == (3, 5) and a.voxels.dtype == np.float32
    np.testing.assert_array_equal(a.energy, ENERGY["energy"])
    energies, option = model.calls[-1]
    assert energies.dtype == torch.float32 and option == 0.5
    assert model.devices == ["cpu"]  # the model is put on the plan's device
    torch.testing.assert_close(energies, torch.tensor([3.0, 10.0, 70.0]))
    # Batch 2 of seed 4 is the model's draw with batch_seed(4, 2), whoever asks for it.
    noise = torch.randn(3, 5, generator=torch.Generator().manual_seed(batch_seed(4, 2)))
    want = torch.tensor([[3.0], [10.0], [70.0]]) * (1 + 0.5 * noise)
    torch.testing.assert_close(torch.from_numpy(a.voxels), want)
    np.testing.assert_array_equal(gen.generate_batch(ENERGY, plan, 4, 2).voxels, a.voxels)
    assert not np.array_equal(gen.generate_batch(ENERGY, plan, 4, 3).voxels, a.voxels)
    assert not np.array_equal(gen.generate_batch(ENERGY, plan, 5, 2).voxels, a.voxels)


def test_the_option_scales_the_spread():
    """The same stream with twice the option: twice the deviation from the mean, cell by cell."""
    model = _Toy()
    e = np.full(4, 20.0)
    narrow = one_pass_batch(model, e, seed=1, index=0, option=0.5).voxels
    wide = one_pass_batch(model, e, seed=1, index=0, option=1.0).voxels
    np.testing.assert_allclose(wide - 20.0, 2 * (narrow - 20.0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("cls", "config", "option", "sampler"),
    [
        (CaloINNGenerator, CaloINNConfig, "temperature", "inverse"),
        (BIBAEGenerator, BIBAEConfig, "latent_scale", "decode"),
        (L2LFlowsGenerator, L2LFlowsConfig, "temperature", "inverse"),
    ],
)
def test_families_name_an_option_their_config_has(cls, config, option, sampler):
    """``plan`` reads the default option from the model's config: the field must exist, in (0, 10)."""
    assert issubclass(cls, OnePassGenerator) and cls.output == "voxels"
    assert (cls.option, cls.sampler) == (option, sampler)
    default = getattr(config.from_preset("cpu"), option)
    assert 0 < default < 10
