"""The one local process pool (engines.LocalEngine): ordered and unordered results, a piece that
fails, a worker that dies (one line, no hang) and a stop request while it waits."""

from pathlib import Path

import pytest

from caloforge.engines import LocalEngine, WorkerDied
from engine_tasks import dies_once, fails, square


@pytest.fixture(scope="module")
def pool():
    with LocalEngine(2) as engine:
        yield engine


def test_ordered_and_unordered_results(pool):
    assert list(pool.imap(square, range(20))) == [x * x for x in range(20)]
    assert sorted(pool.imap_unordered(square, range(20))) == [x * x for x in range(20)]
    assert list(pool.imap(square, [])) == []


def test_a_failing_piece_raises_its_own_error(pool, tmp_path):
    with pytest.raises(ValueError, match="piece 2 is broken"):
        list(pool.imap(fails, [(str(tmp_path / "attempts"), x) for x in range(6)]))
    assert list(pool.imap(square, range(3))) == [0, 1, 4]  # the pool goes on


@pytest.mark.parametrize("ordered", [True, False])
def test_a_dead_worker_is_one_line_not_a_hang(tmp_path, ordered):
    marker = str(tmp_path / "killed")
    with LocalEngine(2) as engine, pytest.raises(WorkerDied, match="stopped unexpectedly") as info:
        run = engine.imap if ordered else engine.imap_unordered
        list(run(dies_once, [(marker, x) for x in range(8)]))
    assert Path(marker).exists() and "\n" not in str(info.value)


def test_a_stop_request_ends_the_wait(monkeypatch):
    import caloforge.safety as safety

    def stop() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(safety, "check_stop", stop)
    with LocalEngine(1) as engine, pytest.raises(KeyboardInterrupt):
        list(engine.imap(__import__("time").sleep, [5.0]))
