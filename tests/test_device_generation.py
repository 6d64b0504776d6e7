"""Generation on a device for every family (issue 37): the path a CUDA device takes (the plan's
device, the networks moved there, every tensor made beside its inputs, every random number drawn
on the host and moved, the showers brought back for writing) runs here on the CPU, where it
gives the showers of the models' own functions bit for bit; and ``--device cuda`` is taken by
every family where torch sees a GPU (simulated: CI has none, nothing runs on one)."""

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import caloforge
from caloforge import devices
from caloforge.generation import drawn_conditions, generation_device
from caloforge.io import VoxelShowers
from caloforge.models import GenerationRequest, registry
from caloforge.models.caloclouds1.generation import generate_batch as caloclouds1_batch
from caloforge.models.calodream.generation import generate as calodream_generate
from caloforge.models.calodream.solver import SolverSpec
from caloforge.models.epic.generation import jet_batch
from caloforge.models.nn.pointwise import POINTS_PER_CALL
from caloforge.models.protocol import batch_seed, generate_batches
from caloforge.odesolvers import BNSSolver

SEED, BATCH = 3, 2
ENERGIES = np.array([12.0, 30.0, 18.0])
#: Every family's device path: shipped model (or variant) → generation options. CaloClouds (I)
#: with the plain PointWise Net, which is what runs on a GPU (the folded one is for CPUs).
CASES: dict[str, dict[str, Any]] = {
    "caloclouds1": {"fast": False, "points_per_call": 4096},
    "caloinn": {},
    "bibae": {},
    "l2lflows": {},
    "calodream": {},  # with its hit-energy calibration
    "calodream-lavit": {},  # the VAE's decoder
    "calodream-ds3": {},  # the laViT's decoded hits through the hit-energy calibration
    "calodream-bns": {},  # a bespoke solver (its coefficients follow the device)
    "epic-gan": {},
    "epic-fm": {},
    "epic-jedi": {},
}
SRC = Path(caloforge.__file__).parent
#: Tensor constructors that make a tensor on the CPU unless given a device.
CONSTRUCTORS = {
    "zeros", "ones", "full", "empty", "eye", "arange", "linspace", "logspace", "tensor", "as_tensor",
    "rand", "randn", "randint", "randperm",
}  # fmt: skip
#: caloforge functions that make host tensors on purpose: shower_groups' index lists (moved by
#: the caller) and a BNS solver built from its numbers (moved whole before it runs).
HOST_SIDE = {
    ("models/nn/pointwise.py", "shower_groups"),
    ("odesolvers.py", "__init__"),
    ("odesolvers.py", "from_dict"),
}


class DeviceAudit(TorchFunctionMode):
    """Records the tensor constructors caloforge's code calls without ``device=`` (on a GPU the
    tensor would sit on the CPU, beside the device's), other than random draws with a
    generator, which are on the host by design (:mod:`caloforge.models._placement`); and draws
    with a generator *on* a device (a CPU generator cannot draw there). (Under a torch function
    mode PyTorch's transformer layers leave their fused path: the same showers up to rounding.)"""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in CONSTRUCTORS and ("device" in kwargs) == ("generator" in kwargs):
            frame = sys._getframe(1)
            where = Path(frame.f_code.co_filename)
            if where.is_relative_to(SRC):
                file = where.relative_to(SRC).as_posix()
                if (file, frame.f_code.co_name) not in HOST_SIDE:
                    self.found.append(f"{file}:{frame.f_lineno} torch.{name}")
        return func(*args, **kwargs)


def _load(name: str) -> Any:
    """The generator of ``name``: a shipped model, or ``calodream-bns`` (the shipped CaloDREAM
    with a perturbed Euler-initialised BNS shape solver as its own)."""
    if name != "calodream-bns":
        return registry.load_generator(name)
    generator = registry.load_generator("calodream")
    bns = BNSSolver(3)
    with torch.no_grad():
        bns.time_logits.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bns.a_offset.copy_(0.01 * torch.ones(3, 3).tril())
    generator.model.sampler["shape"] = SolverSpec("bns", 3, bns.to_dict())
    return generator


def _networks(generator: Any) -> list[nn.Module]:
    """The networks a generation runs: the model and those it embeds (CaloDREAM's)."""
    model = generator.model
    return [m for m in (model, getattr(model, "energy_model", None), getattr(model, "vae_model", None)) if m]


def _plain(name: str, conditions: dict[str, np.ndarray]) -> list[Any]:
    """The showers of the model's own functions, called on the CPU as before generation had a
    device, ``BATCH`` at a time with the same random streams."""
    model = _load(name).model
    family = name.split("-")[0]
    if family == "calodream":
        return list(calodream_generate(model, conditions["energy"], batch_size=BATCH, seed=SEED))
    n = len(next(iter(conditions.values())))
    out = []
    for index, start in enumerate(range(0, n, BATCH)):
        chunk = {k: v[start : start + BATCH] for k, v in conditions.items()}
        gen = torch.Generator().manual_seed(batch_seed(SEED, index))
        if family == "epic":
            out.append(jet_batch(model, chunk, model.config.sampler, model.config.sample_steps, SEED, index))
            continue
        energy = torch.tensor(chunk["energy"], dtype=torch.float32)
        if family == "caloclouds1":
            out.append(caloclouds1_batch(model, energy, gen, 4096, fast=False)[0])
        else:
            option = getattr(model.config, "latent_scale" if family == "bibae" else "temperature")
            out.append(VoxelShowers(chunk["energy"], model.sample(energy, gen, option).numpy()))
    return out


def _arrays(batch: Any) -> dict[str, np.ndarray]:
    names = ("energy", "points", "voxels", "particles", "jet")
    return {k: np.asarray(getattr(batch, k)) for k in names if hasattr(batch, k)}


def _conditions(generator: Any) -> dict[str, np.ndarray]:
    if generator.output == "jets":
        return drawn_conditions(generator, len(ENERGIES), SEED)
    return {"energy": ENERGIES}


@pytest.mark.parametrize("name", list(CASES))
def test_the_device_path_gives_the_cpu_showers_bit_for_bit(name):
    generator = _load(name)
    conditions = _conditions(generator)
    plan = generator.plan(GenerationRequest(device=generation_device(generator, "cpu"), options=CASES[name]))
    assert plan.device == "cpu"
    batches = list(generate_batches(generator, conditions, plan, SEED, BATCH))
    plain = _plain(name, conditions)
    assert len(batches) == len(plain) == 2
    for got, want in zip(batches, plain, strict=True):
        got_arrays, want_arrays = _arrays(got), _arrays(want)
        assert got_arrays.keys() == want_arrays.keys()
        for key, value in want_arrays.items():
            assert got_arrays[key].dtype == value.dtype
            np.testing.assert_array_equal(got_arrays[key], value, err_msg=f"{name} {key}")


@pytest.mark.parametrize("name", list(CASES))
def test_the_device_path_makes_every_tensor_on_the_device(monkeypatch, name):
    """One shower on the device path: the networks are put on the plan's device and every
    tensor is made there (or drawn on the host and moved)."""
    generator = _load(name)
    conditions = {k: v[:1] for k, v in _conditions(generator).items()}
    plan = generator.plan(GenerationRequest(device="cpu", options=CASES[name]))
    moved: list[tuple[int, Any]] = []
    to = nn.Module.to

    def spy(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        moved.append((id(self), args[0] if args else kwargs.get("device")))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", spy)
    with DeviceAudit() as audit:
        list(generate_batches(generator, conditions, plan, SEED, BATCH))
    assert audit.found == []
    for network in _networks(generator):
        assert (id(network), "cpu") in moved


#: One shipped model of every family.
FAMILY_MODELS = {family.name: next(iter(family.shipped)) for family in registry.families()}


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_every_family_takes_a_cuda_device_where_torch_sees_one(monkeypatch, family):
    monkeypatch.setattr(devices, "_cuda_count", lambda: 2)
    generator = registry.load_generator(FAMILY_MODELS[family])
    assert registry.get_family(generator.family).capabilities.gpu
    assert generation_device(generator, "auto") == "cuda:0"
    assert generation_device(generator, "cuda") == "cuda:0"
    assert generation_device(generator, "cuda:1") == "cuda:1"
    assert generation_device(generator, "auto", spread=True) == "cpu"  # --workers: CPU processes
    # The plan takes the device (checked here; generating needs the GPU).
    assert generator.plan(GenerationRequest(device="cuda:1")).device == "cuda:1"
    monkeypatch.setattr(devices, "_cuda_count", lambda: 0)
    assert generation_device(generator, "auto") == "cpu"
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        generation_device(generator, "cuda")


def test_caloclouds1_takes_wider_point_groups_on_a_gpu_only():
    generator = registry.load_generator("caloclouds1")
    assert generator.plan(GenerationRequest()).options["points_per_call"] == POINTS_PER_CALL
    assert generator.plan(GenerationRequest(device="cuda:0")).options["points_per_call"] == 1 << 20
    given = GenerationRequest(device="cuda:0", options={"points_per_call": 5000})
    assert generator.plan(given).options["points_per_call"] == 5000
