"""EPiC-GAN, EPiC-FM and EPiC-JeDi: the backbone's symmetries, training and resuming, generation
through the protocol and the command line, and one simulate → train → generate → evaluate run."""

import numpy as np
import pytest
import torch

from caloforge.generation import generate_file, model_conditions
from caloforge.jets.io import read_jets, write_jets
from caloforge.models.epic import EPiCConfig, EPiCDiscriminator, EPiCNet, load_model, train
from caloforge.models.protocol import GenerationError, GenerationRequest
from caloforge.models.registry import family_for_format, load_generator
from conftest import cli_run, toy_jets

torch.set_num_threads(1)
SMOKE = EPiCConfig.from_preset("smoke")


@pytest.fixture(scope="module")
def jet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("epic") / "toy.h5"
    write_jets(path, toy_jets(200, 12, seed=4), generator="toy")
    return path


@pytest.fixture(scope="module")
def runs(jet_file, tmp_path_factory):
    """One smoke run of each variant."""
    root = tmp_path_factory.mktemp("epic_runs")
    out = {}
    for variant in ("gan", "fm", "jedi"):
        config = EPiCConfig.for_variant(variant, "smoke", n_particles=12, steps=12)
        train(config, jet_file, root / variant)
        out[variant] = root / variant
    return out


def _inputs(seed=0, b=3, p=7, d=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((b, p, d), generator=g)
    mask = torch.ones(b, p, dtype=torch.bool)
    mask[0, 5:] = False
    return x * mask.unsqueeze(-1), mask, torch.randn((b, 4), generator=g)


def test_backbone_is_permutation_equivariant_and_ignores_padding():
    net = EPiCNet(3, 3, 4, SMOKE).double()
    disc = EPiCDiscriminator(3, 4, SMOKE).double()
    x, mask, cond = (t.double() if t.is_floating_point() else t for t in _inputs())
    perm = torch.tensor([4, 2, 0, 1, 3, 6, 5])  # slots 5, 6 of jet 0 are padding: they stay padding
    out = net(x, mask, cond)
    torch.testing.assert_close(net(x[:, perm], mask[:, perm], cond), out[:, perm])
    torch.testing.assert_close(disc(x[:, perm], mask[:, perm], cond), disc(x, mask, cond))
    assert (out[0, 5:] == 0).all()
    # Extra padding slots change nothing.
    pad_x = torch.cat([x, torch.zeros(3, 4, 3, dtype=x.dtype)], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(net(pad_x, pad_mask, cond)[:, :7], out)
    torch.testing.assert_close(disc(pad_x, pad_mask, cond), disc(x, mask, cond))


def test_variants_and_presets():
    assert EPiCConfig.for_variant("gan").conditional is False
    assert EPiCConfig.for_variant("fm").conditional is True
    paper = EPiCConfig.for_variant("gan", "paper")
    assert (paper.n_layers, paper.disc_layers, paper.dim_global, paper.hidden) == (6, 3, 10, 128)
    with pytest.raises(ValueError, match="unknown EPiC variant"):
        EPiCConfig.for_variant("vae")
    with pytest.raises(ValueError, match="sampler"):
        EPiCConfig.for_variant("fm", sampler="ddim")
    for variant in ("gan", "fm", "jedi"):
        assert family_for_format(f"caloforge-epic-{variant}").name == "epic"
    with pytest.raises(ValueError, match="time_power"):
        EPiCConfig.for_variant("fm", time_power=0.0)


@pytest.mark.parametrize(("power", "mean"), [(1.0, 0.5), (2.0, 2 / 3), (4.0, 0.8)])
def test_fm_training_times_follow_time_power(power, mean):
    from caloforge.models.epic.model import EPiCJetModel

    config = EPiCConfig.for_variant("fm", "smoke", n_particles=4, time_power=power)
    model = EPiCJetModel(config, "t", np.ones((2, 4), np.float32))
    x, mask = torch.zeros(20000, 4, 3), torch.ones(20000, 4, dtype=torch.bool)
    t, _ = model.loss_draws(x, mask, torch.Generator().manual_seed(0))
    assert 0 <= t.min() and t.max() <= 1 and abs(t.mean().item() - mean) < 0.01  # E[u^(1/p)] = p/(p+1)


@pytest.mark.parametrize("variant", ["gan", "fm", "jedi"])
def test_each_variant_trains_and_generates_jets(runs, variant, tmp_path):
    gen = load_generator(runs[variant])
    assert gen.output == "jets" and gen.particle == "t" and gen.label == f"epic-{variant}"
    names = [c.name for c in gen.conditions]
    assert ("mass" in names) == (variant != "gan")
    conditions = model_conditions(runs[variant], 40, seed=2)
    result = generate_file(runs[variant], conditions, tmp_path / "gen.h5", seed=2, batch_size=16)
    jets = read_jets(tmp_path / "gen.h5")
    assert result.n_showers == 40 and jets.particles.shape == (40, 12, 4)
    np.testing.assert_array_equal(jets.multiplicity, conditions["num_particles"])
    pt = jets.particles[..., 2]
    assert (np.diff(pt, axis=1) <= 1e-6).all() and np.isfinite(jets.particles).all()
    assert jets.attrs["model_family"] == "epic" and jets.attrs["variant"] == variant
    # The same seed: the same jets, also split differently into batches and over processes.
    generate_file(runs[variant], conditions, tmp_path / "again.h5", seed=2, batch_size=16, workers=2)
    np.testing.assert_array_equal(read_jets(tmp_path / "again.h5").particles, jets.particles)


def test_resume_continues_exactly(jet_file, tmp_path):
    config = EPiCConfig.for_variant("fm", "smoke", n_particles=12, steps=8)
    train(config, jet_file, tmp_path / "full")
    train(config, jet_file, tmp_path / "split", max_minutes=0)  # one step, then stop
    train(config, jet_file, tmp_path / "split", resume=True)
    a, b = load_model(tmp_path / "full"), load_model(tmp_path / "split")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_generation_bad_input(runs, jet_file, tmp_path):
    gen = load_generator(runs["fm"])
    with pytest.raises(GenerationError, match="unknown sampler"):
        gen.plan(GenerationRequest(sampler="heun"))
    with pytest.raises(GenerationError, match="option"):
        gen.plan(GenerationRequest(options={"temperature": 1.0}))
    with pytest.raises(GenerationError, match="one pass"):
        load_generator(runs["gan"]).plan(GenerationRequest(n_steps=5))
    plan = gen.plan(GenerationRequest())
    bad = model_conditions(runs["fm"], 4, seed=0)
    bad["num_particles"][1] = 40
    with pytest.raises(GenerationError, match="1-12"):
        gen.generate_batch(bad, plan, 0, 0)
    # conditions from a jet file; one that holds fewer jets than asked is refused
    from_file = model_conditions(runs["fm"], 10, 0, jet_file)
    assert sorted(from_file) == ["eta", "mass", "num_particles", "pt"] and len(from_file["pt"]) == 10
    with pytest.raises(ValueError, match="more jets"):
        model_conditions(runs["fm"], 500, 0, jet_file)


def test_cli_train_generate_info_and_errors(monkeypatch, capsys, jet_file, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli_run(
        monkeypatch, capsys, "train", "epic-jedi", "--data", jet_file, "--out", run, "--preset", "smoke",
        "--particles", "12", "--steps", "4",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli_run(monkeypatch, capsys, "info", run)
    assert code == 0 and "t jets as particle clouds" in out and "EPiC-JeDi" in out
    out_file = tmp_path / "gen.h5"
    code, out, err = cli_run(monkeypatch, capsys, "generate", "--model", run, "-n", "20", "--out", out_file)
    assert code == 0 and "wrote 20 jets" in out
    code, _, err = cli_run(
        monkeypatch, capsys, "generate", "--model", run, "--conditions-file", jet_file, "-n", "30",
        "--out", tmp_path / "cond.h5",
    )  # fmt: skip
    assert code == 0, err
    before = out_file.read_bytes()
    args = ("generate", "--model", run, "--energy", "50", "--out", out_file, "--overwrite")
    code, _, err = cli_run(monkeypatch, capsys, *args)
    assert code == 2 and "no incident energies" in err and out_file.read_bytes() == before
    args = (
        "train",
        "epic-fm",
        "--data",
        jet_file,
        "--out",
        tmp_path / "r2",
        "--particles",
        "30",
        "--preset",
        "smoke",
    )
    code, _, err = cli_run(monkeypatch, capsys, *args)
    assert code == 2 and "holds 12 particles per jet; 30" in err
    assert not (tmp_path / "r2").exists()


def test_bench_times_jet_models_against_pythia(runs):
    import dataclasses

    from caloforge.bench import JETS_DETECTOR, BenchConfig, ModelSpec, run_bench, to_markdown

    config = dataclasses.replace(BenchConfig.quick(), threads=(1,), batch_sizes=(2,))
    result = run_bench([ModelSpec("gan", "model", str(runs["gan"]))], config)
    rows = {r["generator"]: r for r in result["rows"]}
    assert set(rows) == {"Pythia 8 + FastJet", "gan"}
    assert all(r["detector"] == JETS_DETECTOR and r["particle"] == "t" for r in rows.values())
    assert rows["gan"]["speedup"] == pytest.approx(
        rows["Pythia 8 + FastJet"]["ms_per_shower"] / rows["gan"]["ms_per_shower"]
    )
    assert "| Pythia 8 + FastJet | pythia8 t |" in to_markdown(result)


def test_simulate_train_generate_evaluate(monkeypatch, capsys, tmp_path):
    """The whole jet chain on the command line: Pythia 8 jets, a tiny EPiC-FM, its jets, the report."""
    data = tmp_path / "pythia.h5"
    args = ("simulate-jets", "-n", "60", "--particles", "20", "--seed", "3", "--out", data)
    code, _, err = cli_run(monkeypatch, capsys, *args)
    assert code == 0, err
    run = tmp_path / "run"
    code, _, err = cli_run(monkeypatch, capsys, "train", "epic-fm", "--data", data, "--out", run, "--preset",
                           "smoke", "--particles", "20", "--steps", "6")  # fmt: skip
    assert code == 0, err
    gen = tmp_path / "gen.h5"
    code, _, err = cli_run(monkeypatch, capsys, "generate", "--model", run, "-n", "60", "--out", gen)
    assert code == 0, err
    args = (
        "evaluate",
        data,
        gen,
        "--out",
        tmp_path / "report",
        "--splits",
        "2",
        "--epochs",
        "2",
        "--draws",
        "2",
    )
    code, _, err = cli_run(monkeypatch, capsys, *args, "--no-plots")
    assert code == 0, err
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Pythia" in report and "epic-fm" in report


def test_jedi_clip_option_and_inference_copy_with_sampler_defaults(runs, tmp_path):
    from caloforge.models.epic import save_for_inference

    gen = load_generator(runs["jedi"])
    assert gen.plan(GenerationRequest()).options["clip"] == 3.0
    assert gen.plan(GenerationRequest(options={"clip": 2.0})).attrs["clip"] == 2.0
    with pytest.raises(GenerationError, match="positive"):
        gen.plan(GenerationRequest(options={"clip": 0}))
    copy = save_for_inference(runs["jedi"], tmp_path / "jedi.pt", sample_steps=7, jedi_clip=2.5)
    plan = load_generator(copy).plan(GenerationRequest())
    assert (plan.sampler.n_steps, plan.options["clip"]) == (7, 2.5)
    with pytest.raises(ValueError, match="not a sampling setting"):
        save_for_inference(runs["jedi"], tmp_path / "x.pt", lr=1.0)
    assert not (tmp_path / "x.pt").exists()


def test_jets_on_dask_equal_the_local_run(runs, tmp_path):
    conditions = model_conditions(runs["gan"], 40, seed=4)
    local = generate_file(runs["gan"], conditions, tmp_path / "local.h5", seed=4, batch_size=4)
    dask = generate_file(
        runs["gan"], conditions, tmp_path / "dask.h5", seed=4, batch_size=4, engine="dask", workers=1
    )
    a, b = read_jets(local.path), read_jets(dask.path)
    np.testing.assert_array_equal(a.particles, b.particles)
    np.testing.assert_array_equal(a.jet, b.jet)


def test_conditions_from_a_file_with_more_particles_are_capped(runs, tmp_path):
    wide = tmp_path / "t150.h5"
    write_jets(wide, toy_jets(30, 40, seed=6), generator="toy")
    conditions = model_conditions(runs["gan"], None, 0, wide)
    assert conditions["num_particles"].max() == 12  # the model's particle count, not the file's 40
    generate_file(runs["gan"], conditions, tmp_path / "g.h5", seed=0)
    assert read_jets(tmp_path / "g.h5").n_particles == 12


def test_bench_refuses_a_jet_model_as_fast_simulation(runs):
    from caloforge.bench import BenchConfig, run_bench

    with pytest.raises(ValueError, match="point-cloud shower model"):
        run_bench([], BenchConfig.quick(), geant4=False, fast_sim=str(runs["gan"]))


def test_the_checkpoint_serves_the_averaged_weights(runs):
    from caloforge.models.checkpoint import read_checkpoint

    state = read_checkpoint(runs["fm"] / "checkpoint.pt")
    ema, live = state["train"]["ema"]["module"], state["train"]["net"]
    served = {k[4:]: v for k, v in state["model"].items() if k.startswith("net.")}
    assert served.keys() == ema.keys()
    assert all(torch.equal(served[k], ema[k]) for k in ema)
    assert not all(torch.equal(served[k], live[k]) for k in live)  # EMA lags the live weights


def test_drawn_conditions_come_from_the_condition_flow(runs, jet_file):
    gen = load_generator(runs["fm"])
    assert gen.model.condition_flow is not None and "flow" in gen.describe()["drawn conditions"]
    flow = model_conditions(runs["fm"], 300, seed=1)
    again = model_conditions(runs["fm"], 300, seed=1)
    assert all(np.array_equal(flow[k], again[k]) for k in flow)  # reproducible from the seed
    table = gen.model.condition_table.numpy().astype(np.float64)
    n = flow["num_particles"]
    assert (n == np.round(n)).all() and n.min() >= 1 and n.max() <= 12
    for col, name in enumerate(("pt", "eta", "mass")):  # within the training jets' range ...
        assert table[:, col].min() <= flow[name].min() and flow[name].max() <= table[:, col].max()
    assert not np.isin(flow["pt"], table[:, 0]).all()  # ... but new values, not stored rows
    rows = model_conditions(runs["fm"], 300, seed=1, options={"conditions": "table"})
    assert np.isin(rows["pt"], table[:, 0].astype(np.float32).astype(np.float64)).all()
    assert gen.plan(GenerationRequest(options={"conditions": "table"})).sampler.name == "midpoint"
    from caloforge.api import generate

    jets = generate(runs["fm"], n=20, seed=1, conditions="table")  # the option reaches the draw
    np.testing.assert_array_equal(jets.jet[:, 0], rows["pt"][:20].astype(np.float32))
    with pytest.raises(GenerationError, match="drop one of them"):
        model_conditions(runs["fm"], 10, 0, jet_file, options={"conditions": "table"})
    assert len(model_conditions(runs["fm"], 10, 0, jet_file, options={"clip": 3.0})["pt"]) == 10  # not a draw
    with pytest.raises(GenerationError, match="conditions=flow or conditions=table"):
        gen.plan(GenerationRequest(options={"conditions": "file"}))


def test_models_without_a_condition_flow_draw_stored_rows(jet_file, tmp_path):
    config = EPiCConfig.for_variant("gan", "smoke", n_particles=12, steps=2, condition_flow=False)
    train(config, jet_file, tmp_path / "run")
    gen = load_generator(tmp_path / "run")
    assert gen.model.condition_flow is None
    drawn = model_conditions(gen, 50, seed=3)
    assert np.isin(drawn["pt"], gen.model.condition_table.numpy()[:, 0]).all()
    with pytest.raises(GenerationError, match="trained without a condition flow"):
        model_conditions(gen, 5, seed=3, options={"conditions": "flow"})


def test_the_condition_flow_learns_the_jet_features():
    """Trained alone on two kinds of jets, the flow's draws follow their features: the share of
    each multiplicity and the mean and spread of log pT and log mass."""
    from caloforge.models.epic.conditions import ConditionFlow

    rng = np.random.default_rng(0)
    heavy = rng.random(4000) < 0.3
    jet = np.stack(
        [
            rng.lognormal(np.log(1000), 0.05, 4000),
            rng.uniform(-2, 2, 4000),
            np.where(heavy, rng.normal(175, 10, 4000), rng.lognormal(np.log(60), 0.4, 4000)),
            np.where(heavy, 30, rng.integers(10, 31, 4000)),
        ],
        axis=1,
    )
    jets = torch.tensor(jet, dtype=torch.float32)
    torch.manual_seed(0)
    flow = ConditionFlow(n_particles=30, transforms=2, hidden=32)
    flow.fit_standardisation(jets)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(400):
        idx = torch.randint(0, 4000, (256,), generator=gen)
        loss = flow.nll(jets[idx], torch.rand(256, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    drawn = flow.sample(20000, torch.Generator().manual_seed(2), jets).numpy()
    n_share = [(drawn[:, 3] == 30).mean(), (jet[:, 3] == 30).mean()]
    assert abs(n_share[0] - n_share[1]) < 0.05, n_share
    for col in (0, 2):
        a, b = np.log(drawn[:, col]), np.log(jet[:, col])
        assert abs(a.mean() - b.mean()) < 0.1 * b.std(), col
        assert abs(a.std() / b.std() - 1) < 0.15, col
