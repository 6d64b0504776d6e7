"""bench/gpu_check.py, the script a GPU owner runs, runs: here on the CPU with the smoke
presets (every training, then generation with what it trained)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_every_training_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CALOFORGE_CACHE_DIR", str(tmp_path / "cache"))
    gpu_check = _script()
    out = tmp_path / "check.md"
    args = ["--device", "cpu", "--preset", "smoke", "--steps", "5", "--showers", "64"]
    text = gpu_check.main([*args, "--generate", "8", "--batch", "8", "--no-bench", "--out", str(out)])
    assert out.read_text() == text and "Device: CPU (cpu)" in text
    rows = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    from caloforge.models.registry import families

    commands = {t.command for f in families() for t in f.trainings} | {"distill"}
    assert commands <= set(rows) | {"training"}, commands - set(rows)
    for command in commands:
        cells = [c.strip() for c in rows[command].split("|")[1:-1]]
        assert "failed" not in cells[-1], rows[command]
        assert float(cells[2]) > 0  # steps per second
        if command not in ("calodream-energy", "calodream-vae"):  # parts that do not generate alone
            assert float(cells[6]) > 0, rows[command]  # ms per generated shower
