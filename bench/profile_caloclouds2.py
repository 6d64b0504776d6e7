"""Where the time of one CaloClouds II generation goes: ms per shower for each stage.

Runs the same stages as ``caloforge generate`` (Shower Flow, number-of-points calibration and
per-layer counts, the PointWise Net through the sampler, inverse point scaling, the point
calibrations, writing the HDF5 file), timing each one on its own, for showers at one incident
energy. The total is slightly above ``caloforge bench``'s figure (the clock is read between
stages).

    python bench/profile_caloclouds2.py --model caloclouds2-cm --energy 50 --threads 1

Prints a Markdown table (ms per shower and share of the total).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from caloforge.calibrate import calibrate_points
from caloforge.io import PointShowers, ShowerWriter
from caloforge.models.caloclouds2 import POINTS_PER_CALL, load_model, resolve_precision
from caloforge.models.caloclouds2.generation import _sample_points, _traced_flow
from caloforge.models.nn.pointwise import FoldedPointWiseNet
from caloforge.models.nn.showerflow import largest_remainder, layer_energies
from caloforge.models.registry import resolve_model


def profile(
    model_name: str, energy: float, n: int, batch: int, precision: str, compression: str | None
) -> dict:
    """Seconds per stage for ``n`` showers (rounded up to whole batches) at ``energy`` GeV, after
    one warm-up batch."""
    model = load_model(resolve_model(model_name))
    model.eval()
    precision = resolve_precision(precision)
    net = FoldedPointWiseNet(model.net, torch.bfloat16 if precision == "bfloat16" else torch.float32)
    gen = torch.Generator().manual_seed(0)
    flow_inverse = _traced_flow(model)
    times: dict[str, float] = defaultdict(float)

    def clock(stage: str, start: float) -> float:
        now = time.perf_counter()
        times[stage] += now - start
        return now

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        with ShowerWriter(Path(tmp) / "gen.h5", "points", model.detector, compression=compression) as writer:
            for i in range(-batch, n, batch):
                if i == 0:
                    times.clear()  # the first batch warms up traces and kernels
                e = torch.full((batch,), energy)
                t = time.perf_counter()
                noise = torch.randn(batch, model.flow.n_features, generator=gen)
                flow = model.flow.decode(flow_inverse(e, noise), e)
                t = clock("Shower Flow (traced)", t)
                count = model.calibration(flow.n_points)
                counts = largest_remainder(flow.point_fractions, count)
                layer_e = layer_energies(flow.energy_weights, counts, flow.e_vis)
                mask = torch.arange(int(count.max())).unsqueeze(0) < count.unsqueeze(1)
                t = clock("N calibration, per-layer counts", t)
                z = _sample_points(model, e, flow.n_points, count, gen, model.sampler, POINTS_PER_CALL, net)
                t = clock(f"PointWise Net, {model.sampler.network_calls} evaluation(s), {precision}", t)
                points = model.scaler.inverse(z)
                t = clock("inverse point scaling", t)
                points = calibrate_points(
                    points,
                    mask,
                    counts,
                    layer_e,
                    flow.cog[:, :2],
                    model.cog_correction,
                    model.radial_calibration,
                )
                points = torch.where(mask.unsqueeze(-1), points, 0.0)
                t = clock("point calibrations (layers, layer energies, radial weights, CoG)", t)
                writer.write(PointShowers(e.double().numpy(), points.numpy()))
                clock(f"writing ({compression or 'uncompressed'} HDF5)", t)
            t = time.perf_counter()
        clock(f"writing ({compression or 'uncompressed'} HDF5)", t)  # the last flush
    return dict(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="caloclouds2-cm")
    parser.add_argument("--energy", type=float, default=50.0)
    parser.add_argument("-n", type=int, default=512, help="showers timed (after one warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compression", default="gzip", help="gzip, lzf or none")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compression = None if args.compression == "none" else args.compression
    n = -(-args.n // args.batch_size) * args.batch_size  # whole batches
    times = profile(args.model, args.energy, n, args.batch_size, args.precision, compression)
    total = sum(times.values())
    print(
        f"{args.model}, {args.energy:g} GeV, batch {args.batch_size}, {args.threads} thread(s), {n} showers\n"
    )
    print("| stage | ms/shower | share |\n|---|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {1000 * seconds / n:.3f} | {100 * seconds / total:.0f} % |")
    print(f"| **total** | **{1000 * total / n:.3f}** | |")


if __name__ == "__main__":
    main()
