"""A write the disk cannot take: one line (exit 2), the old file byte-identical, no partial file.

The full disk is made in two ways that need no privileges: a file-size limit on the writing
process (``RLIMIT_FSIZE``: the kernel refuses the write with ``EFBIG``, as it refuses one with
``ENOSPC`` on a full disk), and a reported free space smaller than the file (the check before
each write)."""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from caloforge import atomic
from caloforge.atomic import AtomicH5, DiskFullError, is_no_space
from caloforge.io import PointShowers, ShowerWriter, read_showers, write_showers
from conftest import cli_run, random_points

LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = ["caloforge", *sys.argv[2:]]
    from caloforge.cli import main
    main()
    """
)


def run_limited(limit: int, *args: object) -> subprocess.CompletedProcess:
    """``caloforge ARGS`` in a process that cannot write files larger than ``limit`` bytes."""
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused_cleanly(proc, folder, kept: dict) -> None:
    """Exit 2 with the one-line error last (HDF5 may have reported the refused write of a
    dataset it was closing before: a limit the free-space check cannot see, like a disk another
    process fills, reaches HDF5 first), the kept files byte-identical, nothing partial."""
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: not enough space to write"), proc.stderr
    for path, before in kept.items():
        assert digest(path) == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in kept)  # no partial


@pytest.fixture(scope="module")
def old_points(tmp_path_factory):
    path = tmp_path_factory.mktemp("old") / "old.h5"
    write_showers(path, random_points(200, 300, seed=1))
    return path


@pytest.mark.parametrize(
    ("limit", "command"),
    [
        (200_000, ["generate", "-n", "300", "--overwrite"]),
        (200_000, ["generate", "-n", "300", "--overwrite", "--model", "caloinn"]),
        (30_000, ["generate", "-n", "300", "--overwrite", "--model", "epic-fm"]),
    ],
    ids=["points", "voxels", "jets"],
)
def test_generate_past_the_limit_keeps_the_old_file(tmp_path, old_points, limit, command):
    target = tmp_path / "out.h5"
    target.write_bytes(old_points.read_bytes())
    before = digest(target)
    proc = run_limited(limit, *command, "--out", target)
    assert_refused_cleanly(proc, tmp_path, {target: before})


def test_convert_past_the_limit_keeps_the_old_file(tmp_path, old_points):
    source = tmp_path / "points.h5"
    source.write_bytes(old_points.read_bytes())
    target = tmp_path / "img.h5"
    target.write_bytes(b"an older image file")
    kept = {source: digest(source), target: digest(target)}
    proc = run_limited(20_000, "convert", source, "--detector", "ild-ecal-30", "--out", target, "--overwrite")
    assert_refused_cleanly(proc, tmp_path, kept)


def test_a_disk_reported_full_is_refused_before_the_write(tmp_path, monkeypatch):
    target = tmp_path / "out.h5"
    write_showers(target, random_points(10, 50))
    before = digest(target)
    showers = random_points(300, 200, seed=3)
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 1000)
    with pytest.raises(DiskFullError, match=r"not enough space to write '.*out\.h5': 0\.0 MB free"):
        with ShowerWriter(target, "points") as writer:
            for lo in range(0, 300, 100):
                writer.write(showers[lo : lo + 100])
    assert digest(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_the_rest_of_the_file_is_estimated_from_the_rate_so_far(tmp_path, monkeypatch):
    """With the expected number of rows, the writer stops at the first batch that shows the
    rest will not fit, long before the disk is full."""
    target = tmp_path / "out.h5"
    free = {"bytes": 10**12}
    monkeypatch.setattr(atomic, "free_bytes", lambda path: free["bytes"])
    showers = random_points(640, 100, seed=4)
    with pytest.raises(DiskFullError, match="MB needed"):
        with ShowerWriter(target, "points", expected=640) as writer:
            writer.write(showers[:64])
            free["bytes"] = (tmp_path / next(p.name for p in tmp_path.iterdir())).stat().st_size * 3
            for lo in range(64, 640, 64):
                writer.write(showers[lo : lo + 64])
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_file_missing_rows_is_never_published(tmp_path):
    """The read-back before the rename: a block of rows that never reached the disk (as when
    HDF5 drops a failed write) stops the commit."""
    target = tmp_path / "out.h5"
    target.write_bytes(b"old")
    f = AtomicH5(target)
    ds = f.h5.create_dataset("showers", (0, 3), np.float32, maxshape=(None, 3), chunks=(4, 3))
    ds.resize(12, axis=0)
    ds[:4] = 1.0  # rows 4-11 never written: their blocks are not stored
    with pytest.raises(OSError, match="rows 4-7 were not stored"):
        f.commit({"showers": 12})
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_a_complete_file_passes_the_read_back(tmp_path):
    target = tmp_path / "out.h5"
    with ShowerWriter(target, "points", expected=130) as writer:
        for lo in range(0, 130, 50):
            writer.write(random_points(130, 40, seed=5)[lo : lo + 50])
    back = read_showers(target)
    assert isinstance(back, PointShowers) and len(back) == 130


def test_is_no_space_reads_hdf5_messages():
    hdf5 = RuntimeError("Unable to flush file (file write failed: ..., errno = 28, error message = 'x')")
    assert is_no_space(hdf5)
    assert is_no_space(OSError(27, "File too large"))
    assert not is_no_space(RuntimeError("errno = 2, no such file"))


def test_a_read_only_folder_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "caloforge", "generate", "-n", "2", "--out", folder / "x.h5"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- a second writer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["train", "caloinn", "--preset", "smoke"],
        ["train", "caloinn", "--preset", "smoke", "--resume"],
        ["train", "caloclouds2", "--preset", "smoke"],
        ["train", "calodream-energy", "--preset", "smoke"],
        ["distill", "--teacher", "caloclouds2", "--preset", "smoke"],
    ],
    ids=["train", "resume", "caloclouds2", "calodream", "distill"],
)
def test_a_second_trainer_on_a_busy_run_directory_is_refused(monkeypatch, capsys, tmp_path, command):
    from caloforge.models._training import run_lock

    run = tmp_path / "run"
    data = tmp_path / "data.h5"
    data.write_bytes(b"never read")
    with run_lock(run):  # the first trainer
        code, _, err = cli_run(monkeypatch, capsys, *command, "--data", data, "--out", run)
    assert code == 2, err
    assert "is being written by another caloforge run" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_two_observables_on_one_json_file(monkeypatch, capsys, tmp_path, old_points):
    from caloforge.safety import output_lock

    out = tmp_path / "obs.json"
    with output_lock(out):
        code, _, err = cli_run(monkeypatch, capsys, "observables", old_points, "--json", out)
    assert code == 2 and "is being written by another caloforge run" in err
    assert not out.exists()


# -- a stop that a library swallowed ------------------------------------------------------------


def test_convert_notices_a_swallowed_ctrl_c_and_keeps_its_target(monkeypatch, capsys, tmp_path, old_points):
    """The Ctrl-C of the report landed in h5py, which swallowed the KeyboardInterrupt; the
    handler had set the stop flag, which every writer checks before each write and before the
    rename."""
    from caloforge import convert, safety

    target = tmp_path / "img.h5"
    target.write_bytes(b"the older image file")
    real = convert.voxelise_with_loss
    calls = {"n": 0}

    def voxelise(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            safety._STOP.set()  # what the signal handler does before its exception is lost
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "voxelise_with_loss", voxelise)
    code, _, err = cli_run(
        monkeypatch, capsys, "convert", old_points, "--detector", "ild-ecal-30", "--out", target,
        "--overwrite", "--chunk-size", "20",
    )  # fmt: skip
    assert code == 130, err
    assert target.read_bytes() == b"the older image file"
    assert [p.name for p in tmp_path.iterdir()] == ["img.h5"]
    assert not safety._STOP.is_set()  # cleared when the command ended
