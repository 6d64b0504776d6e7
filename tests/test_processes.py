"""One call in a fresh process (caloforge.processes): result, exception and death are told apart."""

import os

import pytest

from caloforge.processes import ChildFailed, run_in_fresh_process


def test_the_result_comes_back_from_another_process():
    assert run_in_fresh_process(os.getpid) != os.getpid()
    assert run_in_fresh_process(divmod, 17, 5) == (3, 2)


@pytest.mark.parametrize("daemon", [False, True])
def test_an_exception_there_is_one_line_with_its_traceback(daemon):
    with pytest.raises(ChildFailed) as info:
        run_in_fresh_process(int, "not a number", daemon=daemon)
    assert not info.value.died
    assert info.value.summary.startswith("ValueError: invalid literal for int()")
    assert "Traceback" in info.value.detail and "\n" not in info.value.summary


def test_a_process_that_dies_before_answering_says_how():
    with pytest.raises(ChildFailed, match="died \\(exit code 3\\)") as info:
        run_in_fresh_process(os._exit, 3)
    assert info.value.died and info.value.exitcode == 3
