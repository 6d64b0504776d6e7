"""Requests refused up front, in one line, before anything is made on disk: option values of
the wrong type, sizes no machine holds, settings checked before a run creates its pieces."""

import pytest

from caloforge.models.protocol import Option
from conftest import cli_run


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (Option("points_per_call", int, "h", min=1), "abc", "takes a whole number, got 'abc'"),
        (Option("points_per_call", int, "h", min=1), True, "takes a whole number, got True"),
        (Option("points_per_call", int, "h", min=1), 2.5, "takes a whole number, got 2.5"),
        (Option("points_per_call", int, "h", min=1), float("nan"), "takes a whole number, got nan"),
        (Option("points_per_call", int, "h", min=1), 0, "must be at least 1, got 0"),
        (Option("temperature", float, "h"), "abc", "takes a number, got 'abc'"),
        (Option("fast", bool, "h"), "yes", "takes true or false, got 'yes'"),
    ],
)
def test_option_values_of_the_wrong_type_name_the_option(option, value, message):
    with pytest.raises(ValueError, match=f"^--{option.name.replace('_', '-')} {message}"):
        option.convert(value)


def test_whole_floats_and_text_still_convert():
    opt = Option("points_per_call", int, "h", min=1)
    assert opt.convert(4.0) == 4 and opt.convert("12") == 12
    assert Option("fast", bool, "h").convert("TRUE") is True


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "-n", 10**15],
        ["generate", "-n", 2**63 - 1],
        ["simulate", "-n", 10**15],
        ["simulate-jets", "-n", 10**15],
    ],
    ids=["generate", "generate-int64-max", "simulate", "simulate-jets"],
)
def test_a_request_no_memory_holds_is_refused_before_anything_is_made(monkeypatch, capsys, tmp_path, command):
    code, _, err = cli_run(monkeypatch, capsys, *command, "--out", tmp_path / "out.h5")
    assert code == 2, err
    assert "GB of memory" in err and "ask for at most" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_simulate_checks_its_physics_before_making_pieces(monkeypatch, capsys, tmp_path):
    code, _, err = cli_run(
        monkeypatch, capsys, "simulate", "-n", "2", "--physics", "qgsp", "--out", tmp_path / "s.h5"
    )
    assert code == 2 and "unknown physics 'qgsp'" in err
    assert list(tmp_path.iterdir()) == []  # no .s.h5.pieces/ to block the next run
