"""A serving replica's interpreter settings."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from configs.settings import GIL_SWITCH_INTERVAL_S, tune_interpreter


@pytest.fixture
def restore_switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)
    gc.unfreeze()


@pytest.mark.usefixtures("restore_switch_interval")
def test_a_replica_hands_the_gil_over_sooner_than_the_default() -> None:
    sys.setswitchinterval(0.005)
    tune_interpreter()
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
    assert GIL_SWITCH_INTERVAL_S < 0.005


@pytest.mark.usefixtures("restore_switch_interval")
def test_what_a_replica_holds_when_it_starts_is_out_of_the_collectors_reach() -> None:
    gc.unfreeze()
    tune_interpreter()
    assert gc.get_freeze_count() > 10_000  # the modules imported by now, at least
