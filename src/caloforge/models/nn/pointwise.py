"""The PointWise Net of CaloClouds II and the scaling of points into its input space.

Every point ``(x, y, layer coordinate, E)`` of a shower is generated independently given
the shower's context: incident energy, number of points and noise level. The network is a
stack of concat-squash linear layers ``CSL(h, c) = (W h + b) * sigmoid(G c + g) + H c`` with
LeakyReLU(0.01) between them; the noise level enters as ``c_noise = ln(sigma) / 4`` through
fixed random Fourier features, a linear layer and a LeakyReLU, concatenated with the two
conditioning numbers.

Point scaling (:class:`PointScaler`), chosen so each input has a spread close to EDM's
``sigma_data = 0.5`` and no sharp spike:

* ``x``, ``y`` → ``asinh(x / 10 mm)``, then divided by a common scale fitted to the data:
  a shower's dense core stays resolved while its tails (to the ±250 mm world edge) stay
  within a few units. (The public code maps ±200 mm linearly to ±1, which squeezes the core
  into a few hundredths.)
* layer coordinate → standardised (it only ranks points; layers are assigned afterwards);
* ``E`` → ``log(E / MeV)`` standardised, instead of raw MeV: point energies span seven
  orders of magnitude.

Training points are dequantised first (:func:`dequantize`): uniform within their fine-grid
square and within their layer ``[l, l + 1)``.

>>> import torch
>>> net = PointWiseNet(widths=(4, 16, 4))
>>> x = torch.zeros(2, 5, 4)
>>> net(x, torch.zeros(2), energy=torch.tensor([10.0, 90.0]), n_points=torch.tensor([5, 3])).shape
torch.Size([2, 5, 4])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.models._placement import rand

__all__ = [
    "CPU_WIDTHS",
    "PAPER_WIDTHS",
    "POINTS_PAD",
    "POINTS_PER_CALL",
    "ConcatSquashLinear",
    "FoldedPointWiseNet",
    "PointScaler",
    "PointWiseNet",
    "dequantize",
    "fused_linear_available",
    "shower_groups",
]

#: Layer widths of the published PointWise Net (≈ 505k parameters).
PAPER_WIDTHS = (4, 128, 256, 512, 256, 128, 4)
#: A small net for CPU training (≈ 94k parameters; 30 min for 20k steps on one core).
CPU_WIDTHS = (4, 96, 192, 96, 4)


class ConcatSquashLinear(nn.Module):
    """``(W h + b) * sigmoid(G c + g) + H c``: a linear map gated and shifted by the context ``c``."""

    def __init__(self, dim_in: int, dim_out: int, dim_ctx: int) -> None:
        super().__init__()
        self.layer = nn.Linear(dim_in, dim_out)
        self.gate = nn.Linear(dim_ctx, dim_out)
        self.shift = nn.Linear(dim_ctx, dim_out, bias=False)

    def forward(self, h: Tensor, ctx: Tensor) -> Tensor:
        """``h`` ``(B, P, dim_in)``, ``ctx`` ``(B, 1, dim_ctx)`` (shared by all points of a shower)."""
        return self.layer(h) * torch.sigmoid(self.gate(ctx)) + self.shift(ctx)


class PointWiseNet(nn.Module):
    """Concat-squash MLP ``F(x, c_noise, energy, n_points)`` applied to every point independently.

    ``widths`` lists the layer sizes from input to output (both 4 for ``x, y, layer, E``).
    The conditioning is ``[E / energy_scale_gev * 2 - 1, N / n_scale * 2 - 1]`` (SPEC 6.1);
    ``n_fourier`` random frequencies (fixed, drawn from ``fourier_seed``) embed ``c_noise``.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = CPU_WIDTHS,
        energy_scale_gev: float = 100.0,
        n_scale: float = 6000.0,
        n_fourier: int = 32,
        fourier_std: float = 1.0,
        fourier_seed: int = 0,
        latent_dim: int = 0,
    ) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs an input and an output size, got {widths}")
        self.widths = tuple(int(w) for w in widths)
        self.energy_scale_gev = float(energy_scale_gev)
        self.n_scale = float(n_scale)
        freqs = torch.randn(n_fourier, generator=torch.Generator().manual_seed(fourier_seed)) * fourier_std
        self.register_buffer("fourier_freqs", freqs)
        self.noise_embed = nn.Sequential(nn.Linear(2 * n_fourier, 2 * n_fourier), nn.LeakyReLU(0.01))
        self.latent_dim = int(latent_dim)
        dim_ctx = 2 * n_fourier + 2 + self.latent_dim
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a, b, dim_ctx) for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)
        )
        self.act = nn.LeakyReLU(0.01)

    def context(
        self, c_noise: Tensor, energy: Tensor, n_points: Tensor, latent: Tensor | None = None
    ) -> Tensor:
        """The ``(B, 1, 2 n_fourier + 2 [+ latent_dim])`` context shared by the points of each
        shower; ``latent`` ``(B, latent_dim)`` for a net built with ``latent_dim`` (CaloClouds I)."""
        phase = 2 * math.pi * c_noise.reshape(-1, 1) * self.fourier_freqs
        noise = self.noise_embed(torch.cat([phase.sin(), phase.cos()], dim=-1))
        cond = torch.stack(
            [
                energy.to(noise.dtype) / self.energy_scale_gev * 2 - 1,
                n_points.to(noise.dtype) / self.n_scale * 2 - 1,
            ],
            dim=-1,
        )
        if (latent is None) != (self.latent_dim == 0):
            raise ValueError(f"this net takes a latent of {self.latent_dim} numbers per shower")
        parts = [noise, cond] if latent is None else [noise, cond, latent.to(noise.dtype)]
        return torch.cat(parts, dim=-1).unsqueeze(1)

    def forward(
        self, x: Tensor, c_noise: Tensor, energy: Tensor, n_points: Tensor, latent: Tensor | None = None
    ) -> Tensor:
        """``x`` ``(B, P, 4)`` scaled points; ``c_noise``, ``energy`` [GeV], ``n_points``: ``(B,)``;
        ``latent`` ``(B, latent_dim)`` if the net has one."""
        ctx = self.context(c_noise, energy, n_points, latent)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, ctx)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


@functools.cache
def fused_linear_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's fused ``linear + bias + activation`` CPU kernel runs here in ``dtype``.

    It is what :class:`FoldedPointWiseNet` uses on the CPU; where it is missing (a build without
    oneDNN, or ``bfloat16`` on a CPU without AVX-512) the net falls back to batched matmuls.
    """
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w, b = torch.ones(2, 3, dtype=dtype), torch.ones(4, 3, dtype=dtype), torch.zeros(4, dtype=dtype)
        out = op(x, w, b, "leaky_relu", [0.01], "")
    except RuntimeError:
        return False
    return bool(torch.equal(out.float(), torch.full((2, 4), 3.0)))


class FoldedPointWiseNet(nn.Module):
    """Inference form of a :class:`PointWiseNet`: the same function, computed faster.

    A concat-squash layer gates and shifts every point of a shower by the same context, so
    ``(W h + b) * g + s = (diag(g) W) h + (b g + s)``: per shower, each layer is one plain
    linear map. The folded weights are built once per call (cheap: per shower, not per point);
    on the CPU (without grad) each shower's layers then run as oneDNN kernels with the bias and
    the LeakyReLU fused in (one pass over the activations instead of four), elsewhere as
    batched matmuls.
    ``dtype=torch.bfloat16`` runs the point layers in bfloat16 (AMX / AVX-512-BF16 CPUs, GPUs);
    the context, the inputs and outputs stay in float32.

    >>> net = PointWiseNet(widths=(4, 16, 4))
    >>> x, args = torch.randn(2, 5, 4), (torch.zeros(2), torch.tensor([10.0, 90.0]), torch.tensor([5, 3]))
    >>> torch.allclose(FoldedPointWiseNet(net)(x, *args), net(x, *args), atol=1e-5)
    True
    """

    def __init__(self, net: PointWiseNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = net
        self.dtype = dtype

    def folded(self, ctx: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the ``(B, out, in)`` weights and ``(B, out)`` biases for a context ``(B, 1, D)``."""
        out = []
        for layer in self.net.layers:
            gate = torch.sigmoid(layer.gate(ctx))  # (B, 1, out)
            weight = layer.layer.weight.unsqueeze(0) * gate.transpose(1, 2)
            bias = (layer.layer.bias * gate + layer.shift(ctx)).squeeze(1)
            out.append((weight.to(self.dtype), bias.to(self.dtype)))
        return out

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        energy: Tensor,
        n_points: Tensor,
        latent: Tensor | None = None,
        active: Tensor | None = None,
    ) -> Tensor:
        """Same contract as :meth:`PointWiseNet.forward`. ``active`` ``(B,)`` (ONNX export only):
        each shower's first ``active[b]`` points are the real ones; the rest come out zero."""
        layers = self.folded(self.net.context(c_noise, energy, n_points, latent))
        last, slope = len(layers) - 1, self.net.act.negative_slope
        h = x.to(self.dtype)
        if torch.onnx.is_in_onnx_export():
            # Exported to ONNX: a loop over showers, one small matmul per layer and shower (only
            # over its real points), so each shower's activations stay in the cache as in the
            # fused path below. (A TorchScript file cannot hold the compiled loop: it gets the
            # batched matmuls.)
            flat = [t for weight, bias in layers for t in (weight.transpose(1, 2), bias)]
            if active is None:
                active = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
            return _per_shower_layers(len(layers))(h, slope, active, *flat).to(x.dtype)
        fused = x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.jit.is_tracing()
        if fused and fused_linear_available(self.dtype):
            op = torch.ops.mkldnn._linear_pointwise  # no autograd formula: inference only
            out = torch.empty((*x.shape[:-1], self.net.widths[-1]), dtype=x.dtype, device=x.device)
            for b in range(x.shape[0]):
                hb = h[b]
                for i, (weight, bias) in enumerate(layers):
                    if i < last:
                        hb = op(hb, weight[b], bias[b], "leaky_relu", [slope], "")
                    else:
                        hb = op(hb, weight[b], bias[b], "none", [], "")
                out[b] = hb
            return out
        for i, (weight, bias) in enumerate(layers):
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if i < last:
                h = F.leaky_relu(h, slope)
        return h.to(x.dtype)


@functools.cache
def _per_shower_layers(n_layers: int) -> torch.jit.ScriptFunction:
    """A TorchScript function ``(h (B, P, in), slope, active (B,), w0 (B, in, out), b0 (B, out),
    ...) -> (B, P, out)`` running ``n_layers`` per-shower linear layers (LeakyReLU between) on
    the first ``active[s]`` points of each shower (the other rows: zero) in a loop over showers:
    traced code keeps the loop (an ONNX ``Loop``), and the layers are unrolled in it."""
    args = ", ".join(f"w{i}: Tensor, b{i}: Tensor" for i in range(n_layers))
    body = ["        k = int(active[s])"]
    for i in range(n_layers):
        body.append(f"        x = torch.addmm(b{i}[s], {'h[s, :k]' if i == 0 else 'x'}, w{i}[s])")
        if i < n_layers - 1:
            body.append("        x = torch.nn.functional.leaky_relu(x, slope)")
    body.append("        x = torch.nn.functional.pad(x, [0, 0, 0, h.shape[1] - k])")
    source = (
        f"def per_shower(h: Tensor, slope: float, active: Tensor, {args}) -> Tensor:\n"
        "    outs: List[Tensor] = []\n"
        "    for s in range(h.shape[0]):\n" + "\n".join(body) + "\n        outs.append(x)\n"
        "    return torch.stack(outs)\n"
    )
    return torch.jit.CompilationUnit(source).per_shower


def dequantize(points: Tensor, fine_cell_mm: float, generator: torch.Generator | None = None) -> Tensor:
    """Spread clustered points uniformly over their fine-grid square and over their layer.

    Geant4 points sit at fine-square centres and at ``l + 0.5``; a model trained on those
    exact values would have to learn a comb. ``points`` ``(..., 4)``: x, y mm, layer, E.
    """
    u = rand((*points.shape[:-1], 3), generator, points.device, points.dtype)
    out = points.clone()
    out[..., :2] += (u[..., :2] - 0.5) * fine_cell_mm
    out[..., 2] = points[..., 2].floor() + u[..., 2]
    return out


class PointScaler(nn.Module):
    """Maps points ``(x mm, y mm, layer coordinate, E MeV)`` to network space and back.

    ``x, y → asinh(x / xy_soft_mm) / scale_xy``; layer and ``log E`` are standardised;
    every output is then multiplied by ``target_std`` (EDM's ``sigma_data``). The statistics
    are buffers, fitted with :meth:`fit` on training points. :meth:`inverse` clamps to
    ``half_size_mm`` and to the fitted log-energy range widened by ``energy_margin`` so
    that sampled tails cannot overflow (or give ``E = 0``, which would read as padding).

    >>> s = PointScaler()
    >>> pts = torch.tensor([[[3.0, -40.0, 12.5, 0.2]]])
    >>> torch.allclose(s.inverse(s(pts)), pts)
    True
    """

    def __init__(
        self, xy_soft_mm: float = 10.0, target_std: float = 0.5, half_size_mm: float = 250.0
    ) -> None:
        super().__init__()
        self.xy_soft_mm = float(xy_soft_mm)
        self.target_std = float(target_std)
        self.half_size_mm = float(half_size_mm)
        self.energy_margin = 2.0
        self.register_buffer("loc", torch.zeros(4))
        self.register_buffer("scale", torch.ones(4))
        self.register_buffer("log_e_range", torch.tensor([-20.0, 10.0]))

    def _warp(self, points: Tensor) -> Tensor:
        return torch.stack(
            [
                torch.asinh(points[..., 0] / self.xy_soft_mm),
                torch.asinh(points[..., 1] / self.xy_soft_mm),
                points[..., 2],
                points[..., 3].clamp_min(1e-30).log(),
            ],
            dim=-1,
        )

    @torch.no_grad()
    def fit(self, points: Tensor, mask: Tensor) -> PointScaler:
        """Fit the standardisation to the real points ``points[mask]`` (``mask`` ``(...,)`` bool)."""
        w = self._warp(points[mask].double())
        xy_std = w[:, :2].pow(2).mean().sqrt()  # x and y share one scale and stay centred on the axis
        self.loc.copy_(torch.stack([w.new_zeros(()), w.new_zeros(()), w[:, 2].mean(), w[:, 3].mean()]))
        std = torch.stack([xy_std, xy_std, w[:, 2].std(), w[:, 3].std()])
        self.scale.copy_(std.nan_to_num(1.0).clamp_min(1e-3))
        self.log_e_range.copy_(torch.stack([w[:, 3].min(), w[:, 3].max()]))
        return self

    @torch.no_grad()
    def fit_blocks(self, blocks: Iterable[tuple[Tensor, Tensor]]) -> PointScaler:
        """:meth:`fit` over ``(points, mask)`` blocks of a set too large to hold at once (the
        same statistics, summed block by block in float64)."""
        n, sums, squares = 0, torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
        lo, hi = math.inf, -math.inf
        for points, mask in blocks:
            w = self._warp(points[mask].double())
            if not len(w):
                continue
            n += len(w)
            sums += w.sum(0)
            squares += w.pow(2).sum(0)
            lo, hi = min(lo, float(w[:, 3].min())), max(hi, float(w[:, 3].max()))
        if n == 0:
            raise ValueError("no real points to fit the point standardisation on")
        mean = sums / n
        var = ((squares - n * mean.pow(2)) / max(n - 1, 1)).clamp_min(0.0)
        xy_std = ((squares[0] + squares[1]) / (2 * n)).sqrt()
        self.loc.copy_(torch.stack([mean.new_zeros(()), mean.new_zeros(()), mean[2], mean[3]]))
        std = torch.stack([xy_std, xy_std, var[2].sqrt(), var[3].sqrt()])
        self.scale.copy_(std.nan_to_num(1.0).clamp_min(1e-3))
        self.log_e_range.copy_(torch.tensor([lo, hi]))
        return self

    def forward(self, points: Tensor) -> Tensor:
        """Physical points ``(..., 4)`` → network space."""
        return (self._warp(points) - self.loc) / self.scale * self.target_std

    def inverse(self, z: Tensor) -> Tensor:
        """Network space → physical points (energies strictly positive)."""
        w = z / self.target_std * self.scale + self.loc
        limit = math.asinh(self.half_size_mm / self.xy_soft_mm)
        lo, hi = self.log_e_range[0] - self.energy_margin, self.log_e_range[1] + self.energy_margin
        x, y, depth, log_e = w.unbind(-1)  # one split (not four gathers) in an exported graph
        return torch.stack(
            [
                torch.sinh(x.clamp(-limit, limit)) * self.xy_soft_mm,
                torch.sinh(y.clamp(-limit, limit)) * self.xy_soft_mm,
                depth,
                log_e.clamp(lo, hi).exp(),
            ],
            dim=-1,
        )


#: Padded points per network call when generating: showers of similar size are grouped up to
#: this many. On the CPU the folded net runs each shower's layers on its own, so this only sets
#: how many showers share the per-call work (noise, folded weights, the sampler's scalings): 32k
#: points (about 14 CaloClouds II showers at 50 GeV) was the fastest of 8k-200k.
POINTS_PER_CALL = 32768
#: Point groups are padded to a multiple of this many points, so that the matmul kernels (built
#: per shape by oneDNN, especially in bfloat16) are few and get reused.
POINTS_PAD = 64


def padded_width(n_max: int, pad: int = POINTS_PAD) -> int:
    """``n_max`` rounded up to a multiple of ``pad``.

    >>> padded_width(65), padded_width(64)
    (128, 64)
    """
    return (int(n_max) + pad - 1) // pad * pad


def shower_groups(n: Tensor, points_per_call: int, pad: int) -> Iterator[tuple[Tensor, int]]:
    """Groups of showers to generate together: ``(indices, width)`` with ``n`` ``(B,)`` points
    per shower. Showers are sorted by size and grouped up to ``points_per_call`` padded points
    (at least one shower per group); ``width`` is the group's largest size rounded up to a
    multiple of ``pad``, so little work goes into padding and few kernel shapes appear.

    >>> [(i.tolist(), w) for i, w in shower_groups(torch.tensor([70, 5, 60]), 128, 64)]
    [([1, 2], 64), ([0], 128)]
    """
    padded = [padded_width(v, pad) for v in n.tolist()]
    order = torch.argsort(n, stable=True).tolist()
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * padded[order[stop]] <= points_per_call:
            stop += 1
        yield torch.tensor(order[start:stop]), int(padded[order[stop - 1]])
        start = stop
