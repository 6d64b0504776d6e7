"""Export a trained CaloClouds II model to ONNX or TorchScript, for C++ simulation frameworks.

:class:`ExportedCaloClouds2` is a self-contained ``torch.nn.Module`` that runs the whole
generation of :func:`caloforge.models.caloclouds2.generation` for one batch of showers — Shower
Flow, N calibration, per-layer counts and energies, sampler over the PointWise Net, point
scaling and point calibrations — with every random number an input, so that its output is
deterministic and can be compared across runtimes. :func:`export_model` traces it and writes
an ``.onnx`` or TorchScript ``.pt`` file (see ``docs/export.md``).

Inputs (``B`` showers and ``P`` point slots, both axes dynamic — ``P`` up to ``max_points``,
the most the model makes; ``F = 2 L + 2`` flow features, ``L`` layers):

=============  ======================  ===========================================================
name           shape, type             meaning
=============  ======================  ===========================================================
energy         ``(B,)`` float32        incident energy, GeV
flow_noise     ``(B, F)`` float32      standard normal: the Shower Flow's base noise
point_noise    ``(B, P, 4)`` float32   standard normal: the sampler's initial noise (× sigma_max)
step_noise     ``(S-1, B, P, 4)``      standard normal, only for a consistency sampler with
               float32                 ``S > 1`` steps: the noise re-added between the steps
=============  ======================  ===========================================================

Outputs:

=============  ======================  ===========================================================
layer_counts   ``(B, L)`` int64        points per layer (sums to ``n_points``)
n_points       ``(B,)`` int64          points of each shower, ``<= P``
points         ``(B, P, 4)`` float32   ``x mm, y mm, layer coordinate l + 0.5, E MeV``; the first
                                       ``n_points`` slots are the shower, the rest are zero
n_needed       ``(B,)`` int64          points each shower asked for (``n_points = min(n_needed,
                                       P)``): run with ``P = 1`` to learn it cheaply
=============  ======================  ===========================================================

Given the same noise, the output equals :func:`~caloforge.models.caloclouds2.generation`'s: the
noise ``generate`` draws for a shower of ``n`` points is ``point_noise[b, :n]`` (points are
sampled independently, so the padded slots ``n..P-1`` are computed and then masked). A
shower whose calibrated number of points exceeds ``P`` keeps its ``P`` shallowest points (the
deepest are dropped, their layers' energy with them); the default ``P`` — the largest number of
points the model's N calibration can return — never drops any.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from caloforge import __version__
from caloforge.calibrate import calibrate_energies
from caloforge.io import atomic_output
from caloforge.models.caloclouds2.checkpoint import load_model
from caloforge.models.caloclouds2.config import SamplerSpec
from caloforge.models.caloclouds2.generation import _FlowInverse, resolve_sampler
from caloforge.models.caloclouds2.model import CaloClouds2
from caloforge.models.nn.couplinginverse import CouplingFlowInverse, supports_coupling_inverse
from caloforge.models.nn.pointwise import FoldedPointWiseNet
from caloforge.models.nn.showerflow import largest_remainder, layer_energies

__all__ = ["EXPORT_FORMATS", "ExportedCaloClouds2", "OnnxGenerator", "default_max_points", "export_model"]

#: Formats :func:`export_model` writes.
EXPORT_FORMATS = ("onnx", "torchscript")

INPUT_NAMES = ("energy", "flow_noise", "point_noise", "step_noise")
OUTPUT_NAMES = ("layer_counts", "n_points", "points", "n_needed")


def default_max_points(model: CaloClouds2) -> int:
    """The largest number of points the model can generate: its N calibration over every flow count."""
    n_flow = torch.arange(1, model.max_points + 1)
    return int(model.calibration(n_flow).max())


def _assign_layers(points: Tensor, mask: Tensor, layer_counts: Tensor) -> Tensor:
    """:func:`caloforge.calibrate.assign_layers` without ``searchsorted`` (not in ONNX) and checks."""
    depth = points[..., 2].masked_fill(~mask, float("inf"))
    if torch.onnx.is_in_onnx_export():
        # The ONNX exporter has no stable argsort; argsort becomes TopK, whose ties go to the lower
        # index first (ONNX spec): the same order.
        order = torch.argsort(depth, dim=1)
    else:
        order = torch.argsort(depth, dim=1, stable=True)
    slots = order.shape[1]
    positions = torch.arange(slots, device=order.device).expand_as(order)
    rank = torch.zeros_like(order).scatter(1, order, positions)
    # The layer of sorted position j is the number of layer bounds <= j: count the bounds at
    # each position (a scatter-add), then a running sum.
    bounds = layer_counts.cumsum(dim=1).clamp(max=slots)
    at = torch.cat([torch.zeros_like(order), torch.zeros_like(order[:, :1])], dim=1)
    at = at.scatter_add(1, bounds, torch.ones_like(bounds))
    by_position = at[:, :slots].cumsum(dim=1).clamp(max=layer_counts.shape[1] - 1)
    layer = by_position.gather(1, rank)
    depth_out = torch.where(mask, layer.to(points.dtype) + 0.5, points[..., 2])
    return torch.cat([points[..., :2], depth_out.unsqueeze(-1), points[..., 3:]], dim=-1)


class ExportedCaloClouds2(nn.Module):
    """CaloClouds II generation with explicit noise: ``forward(energy, flow_noise, point_noise
    [, step_noise]) -> (layer_counts, n_points, points)`` (see the module docstring).

    ``max_points`` (``P``) defaults to :func:`default_max_points`; ``sampler`` to the model's own
    (the one its N calibration was fitted with).
    """

    def __init__(
        self, model: CaloClouds2, max_points: int | None = None, sampler: SamplerSpec | None = None
    ) -> None:
        super().__init__()
        spec = model.sampler if sampler is None else sampler
        if spec.consistency != model.sampler.consistency:
            allowed = "consistency" if model.sampler.consistency else "heun or euler"
            raise ValueError(f"sampler '{spec.name}' does not fit this model: use {allowed}")
        most = default_max_points(model)
        self.max_points = most if max_points is None else int(max_points)
        if not 1 <= self.max_points <= 4 * most:
            raise ValueError(
                f"--max-points {self.max_points} is outside 1-{4 * most}: this model never makes more "
                f"than {most} points per shower (the default)"
            )
        self.sampler = spec
        self.n_layers = model.detector.n_layers
        self.n_features = model.flow.n_features
        self.flow = model.flow
        self.flow_inverse = (
            CouplingFlowInverse(model.flow)
            if supports_coupling_inverse(model.flow)
            else _FlowInverse(model.flow)
        )
        # The folded net: one batched matmul per layer and shower instead of a linear map, a gate
        # and a shift over every point.
        self.denoiser = model.denoiser_for(FoldedPointWiseNet(model.net))
        self.scaler = model.scaler
        self.calibration = model.calibration
        self.cog_correction = model.cog_correction
        self.radial = model.radial_calibration
        self.eval()

    @property
    def step_noise_steps(self) -> int:
        """Leading size of the ``step_noise`` input (0: no such input)."""
        return self.sampler.n_steps - 1 if self.sampler.consistency else 0

    def example_inputs(self, batch: int = 2, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """Random inputs of the right shapes (energies mid-range), e.g. for tracing."""
        energy = torch.full((batch,), 50.0)
        shapes = [(batch, self.n_features), (batch, self.max_points, 4)]
        if self.step_noise_steps:
            shapes.append((self.step_noise_steps, batch, self.max_points, 4))
        return (energy, *(torch.randn(s, generator=generator) for s in shapes))

    def _sample(self, x: Tensor, step_noise: Tensor | None, cond: dict[str, Tensor]) -> Tensor:
        spec = self.sampler
        if not spec.consistency:
            return spec.sample(self.denoiser, x, None, **cond)  # type: ignore[arg-type]
        # sample_consistency with the noise between steps given.
        sigmas = spec.sigmas().tolist()
        x = self.denoiser(x, x.new_full((x.shape[0],), sigmas[0]), **cond)
        for i, sigma in enumerate(sigmas[1:-1]):
            if step_noise is None:
                raise ValueError(f"a {spec.n_steps}-step consistency sampler needs step_noise")
            x = x + step_noise[i] * math.sqrt(max(sigma**2 - spec.sigma_min**2, 0.0))
            x = self.denoiser(x, x.new_full((x.shape[0],), sigma), **cond)
        return x

    @torch.no_grad()
    def forward(
        self, energy: Tensor, flow_noise: Tensor, point_noise: Tensor, step_noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``energy`` ``(B,)`` GeV and standard normal noise -> ``(layer_counts, n_points, points,
        n_needed)``."""
        flow = self.flow.decode(self.flow_inverse(energy, flow_noise), energy)
        n_flow = flow.n_points
        n = self.calibration(n_flow)
        counts = largest_remainder(flow.point_fractions, n)
        layer_e = layer_energies(flow.energy_weights, counts, flow.e_vis)
        # Showers larger than the noise's point axis keep their shallowest points.
        slots = point_noise.shape[1]
        kept = n.clamp(max=slots)
        bounds = counts.cumsum(dim=1).clamp(max=kept.unsqueeze(1))
        counts = bounds - torch.cat([torch.zeros_like(bounds[:, :1]), bounds[:, :-1]], dim=1)
        mask = torch.arange(slots, device=energy.device).unsqueeze(0) < kept.unsqueeze(1)
        x = point_noise * self.sampler.sigma_max
        # `active`: the net skips each shower's padded slots (the ONNX loop; ignored otherwise).
        z = self._sample(x, step_noise, {"energy": energy, "n_points": n_flow, "active": kept})
        points = _assign_layers(self.scaler.inverse(z), mask, counts)
        points = calibrate_energies(points, mask, layer_e, flow.cog[:, :2], self.cog_correction, self.radial)
        # A product, not a where: ONNX Runtime's Where is not vectorised (every slot is finite).
        points = points * mask.unsqueeze(-1).to(points.dtype)
        return counts, kept, points, n


def _sinh_symbolic(g: Any, x: Any) -> Any:
    # (e^x - e^-x) / 2 with one Exp: ONNX Runtime's Exp is vectorised, its Sinh is not (4x slower
    # here). The inputs are clamped to |x| <= asinh(half size / soft scale), so nothing overflows.
    e = g.op("Exp", x)
    half = g.op("Constant", value_t=torch.tensor(0.5))
    return g.op("Mul", g.op("Sub", e, g.op("Reciprocal", e)), half)


def export_metadata(module: ExportedCaloClouds2, model: CaloClouds2) -> dict[str, str]:
    """What an exported file records about the model (string values)."""
    inputs = list(INPUT_NAMES[: 4 if module.step_noise_steps else 3])
    return {
        "producer": "caloforge",
        "caloforge_version": __version__,
        "model_family": "caloclouds2",
        "detector": model.detector.name,
        "detector_json": json.dumps(model.detector.to_dict()),
        "n_layers": str(module.n_layers),
        "energy_min_gev": repr(model.energy_range[0]),
        "energy_max_gev": repr(model.energy_range[1]),
        "sampler": json.dumps(module.sampler.to_dict()),
        "max_points": str(module.max_points),
        "n_flow_features": str(module.n_features),
        "inputs": ", ".join(inputs),
        "outputs": ", ".join(OUTPUT_NAMES),
        "description": (
            f"inputs: energy (B,) float32 GeV; flow_noise (B, {module.n_features}) float32 N(0,1); "
            f"point_noise (B, P, 4) float32 N(0,1), P <= {module.max_points} point slots"
            + (
                f"; step_noise ({module.step_noise_steps}, B, P, 4) float32 N(0,1)"
                if module.step_noise_steps
                else ""
            )
            + f". outputs: layer_counts (B, {module.n_layers}) int64; n_points (B,) int64; "
            "points (B, P, 4) float32 [x mm, y mm, layer + 0.5, E MeV], zero beyond n_points; "
            "n_needed (B,) int64, the points each shower asked for"
        ),
    }


def export_model(
    model: str | Path | CaloClouds2,
    out: str | Path,
    format: str = "onnx",
    max_points: int | None = None,
    opset: int = 17,
    sampler: str | SamplerSpec | None = None,
    n_steps: int | None = None,
) -> Path:
    """Write ``model`` (a :class:`CaloClouds2` or a checkpoint path) as ``format`` to ``out``, atomically.

    ``format`` is ``onnx`` (metadata in the file's ``metadata_props``) or ``torchscript``
    (metadata in the extra file ``caloforge.json``). ``max_points`` defaults to
    :func:`default_max_points`; ``sampler`` / ``n_steps`` replace the model's own as in
    :func:`~caloforge.models.caloclouds2.resolve_sampler`. See :class:`ExportedCaloClouds2`.
    Bad arguments, an unreadable checkpoint, a missing output directory or a missing ``onnx``
    package raise ``ValueError``.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format '{format}': use one of {', '.join(EXPORT_FORMATS)}")
    if format == "onnx":
        if opset < 16:
            raise ValueError(f"ONNX export needs opset 16 or later (ScatterElements with add), got {opset}")
        try:
            import onnx
        except ImportError:
            raise ValueError("ONNX export needs the onnx package: pip install 'caloforge[export]'") from None
    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"cannot write '{out}': directory '{out.parent}' does not exist, create it first")
    net = model if isinstance(model, CaloClouds2) else load_model(model)
    if isinstance(sampler, SamplerSpec):
        spec = sampler if n_steps is None else replace(sampler, n_steps=n_steps)
    else:
        spec = resolve_sampler(net, sampler, n_steps)
    module = ExportedCaloClouds2(net, max_points, spec)
    meta = export_metadata(module, net)
    inputs = module.example_inputs(2, torch.Generator().manual_seed(0))
    names = list(INPUT_NAMES[: len(inputs)])
    with atomic_output(out) as tmp, warnings.catch_warnings():
        # Tracing and exporter chatter (constant Python values, deprecations of torch.jit / the
        # TorchScript-based ONNX exporter) is expected here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        if format == "torchscript":
            traced = torch.jit.trace(module, inputs, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"caloforge.json": json.dumps(meta)})
        else:
            dynamic: dict[str, Any] = {name: {0: "batch"} for name in [*names, *OUTPUT_NAMES]}
            dynamic["point_noise"] = dynamic["points"] = {0: "batch", 1: "slots"}
            if "step_noise" in dynamic:
                dynamic["step_noise"] = {1: "batch", 2: "slots"}
            # The TorchScript-based exporter (the dynamo one needs onnxscript) lacks aten::sinh.
            torch.onnx.register_custom_op_symbolic("aten::sinh", _sinh_symbolic, opset)
            try:
                torch.onnx.export(
                    module,
                    inputs,
                    str(tmp),
                    input_names=names,
                    output_names=list(OUTPUT_NAMES),
                    dynamic_axes=dynamic,
                    opset_version=opset,
                    dynamo=False,
                )
            finally:
                torch.onnx.unregister_custom_op_symbolic("aten::sinh", opset)
            proto = onnx.load(str(tmp))
            for key, value in meta.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            proto.producer_name = "caloforge"
            proto.producer_version = __version__
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
    return out


class OnnxGenerator:
    """Generate showers with an exported ``.onnx`` file through ONNX Runtime (CPU).

    The noise is drawn with NumPy from ``seed``; ``threads`` sets ONNX Runtime's intra-op
    threads (default: torch's current thread count). Yields
    :class:`~caloforge.io.PointShowers` like :func:`~caloforge.models.caloclouds2.generation`.
    """

    output = "points"
    particle = "gamma"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the export extra is installed in CI
            raise ValueError("ONNX Runtime is not installed: pip install 'caloforge[export]'") from exc
        from caloforge.detector import detector_from_dict

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("producer") != "caloforge":
            raise ValueError(f"'{path}' was not exported by caloforge export")
        self.detector = detector_from_dict(json.loads(meta["detector_json"]))
        self.sampler = SamplerSpec(**json.loads(meta["sampler"]))
        self.max_points = int(meta["max_points"])
        self.n_features = int(meta["n_flow_features"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    @property
    def network_calls(self) -> int:
        """PointWise Net evaluations per shower batch."""
        return self.sampler.network_calls

    def _point_noise(self, rng: Any, b: int, width: int) -> dict[str, Any]:
        import numpy as np

        feed = {"point_noise": rng.standard_normal((b, width, 4), dtype=np.float32)}
        if "step_noise" in self.inputs:
            steps = self.sampler.n_steps - 1
            feed["step_noise"] = rng.standard_normal((steps, b, width, 4), dtype=np.float32)
        return feed

    def generate(self, energies_gev: Any, batch_size: int = 64, seed: int = 0) -> Any:
        """Yield showers for ``energies_gev``, ``batch_size`` at a time.

        A file with a dynamic point axis (``n_needed`` among its outputs) gets as many noise
        slots per shower as the batch needs: the first batch is run once with one slot (the
        Shower Flow and N calibration; the point work is nothing) to learn that number, later
        batches guess it from the batch before (+10 %) and are run again, wider, in the rare
        case that was too few. Older files get ``max_points`` slots."""
        import numpy as np

        from caloforge.io import PointShowers

        rng = np.random.default_rng(seed)
        energies = np.asarray(energies_gev, dtype=np.float32).reshape(-1)
        dynamic = "n_needed" in [o.name for o in self.session.get_outputs()]
        fetch = ["layer_counts", "n_points", "points", "n_needed"] if dynamic else None
        guess = 0
        for start in range(0, len(energies), batch_size):
            energy = energies[start : start + batch_size]
            b = len(energy)
            flow_noise = rng.standard_normal((b, self.n_features), dtype=np.float32)
            feed = {"energy": energy, "flow_noise": flow_noise}
            if not dynamic:
                noise = self._point_noise(rng, b, self.max_points)
                _, n_points, points = self.session.run(None, feed | noise)
            else:
                if guess == 0:
                    (needed,) = self.session.run(["n_needed"], feed | self._point_noise(rng, b, 1))
                    guess = int(needed.max())
                while True:
                    width = min(max(guess, 1), self.max_points)
                    noise = self._point_noise(rng, b, width)
                    _, n_points, points, needed = self.session.run(fetch, feed | noise)
                    guess = -(-int(needed.max()) * 11 // 10)
                    if int(needed.max()) <= width:
                        break
            width = max(int(n_points.max()), 1)
            yield PointShowers(energy.astype(np.float64), points[:, :width])
