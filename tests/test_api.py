"""The Python API of the README: ``caloforge.generate`` gives what ``caloforge generate`` writes,
and the README's library example runs as printed."""

import re
from pathlib import Path

import numpy as np
import pytest

import caloforge
from caloforge.io import read_showers
from caloforge.jets.io import read_jets
from conftest import cli_run

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.parametrize(
    ("model", "read"),
    [("caloclouds2-cm", read_showers), ("caloinn", read_showers), ("epic-fm", read_jets)],
    ids=["points", "voxels", "jets"],
)
def test_generate_in_memory_equals_the_generate_command(monkeypatch, capsys, tmp_path, model, read):
    out = tmp_path / "g.h5"
    code, _, err = cli_run(
        monkeypatch, capsys, "generate", "--model", model, "-n", "70", "--seed", "3", "--out", out
    )
    assert code == 0, err
    made = caloforge.generate(model, n=70, seed=3)
    written = read(out)
    assert len(made) == len(written) == 70
    for name in ("energy", "points", "voxels", "particles", "jet"):
        if hasattr(made, name):
            a, b = np.asarray(getattr(made, name)), np.asarray(getattr(written, name))
            np.testing.assert_allclose(a[tuple(slice(0, s) for s in b.shape)], b, rtol=1e-6, atol=1e-6)


def test_generate_takes_energies_and_options():
    showers = caloforge.generate("caloinn", energies=[20.0, 50.0], seed=1, temperature=0.9)
    assert showers.energy.tolist() == [20.0, 50.0]
    with pytest.raises(ValueError, match="temperature"):
        caloforge.generate("caloinn", energies=[20.0], temperature="hot")


def test_the_readme_library_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "caloforge.generate(" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert (tmp_path / "report" / "report.md").exists()
    assert len(scope["jets"]) == 100 and len(scope["cells"]) == 2
