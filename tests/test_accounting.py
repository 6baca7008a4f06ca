"""The run's account: whole-run totals across processes, one energy total per scope."""

from types import SimpleNamespace

import pytest

from pipeline.energy import EnergyWindow
from pipeline.train.accounting import RunAccount, energy_record
from pipeline.train.distributed import SINGLE
from pipeline.train.state import ProcessWork, TrainState


class FixedMeter:
    """A meter whose every window costs ``joules``."""

    min_window_s, note = 0.0, None

    def __init__(self, method: str, joules: float) -> None:
        self.method, self.joules = method, joules

    def begin(self) -> None:
        pass

    def finish(self) -> list[dict]:
        return [{"device": "fake", "joules": self.joules}]


def test_energy_of_different_scopes_is_never_added():
    record = energy_record({"nvml_energy_counter": 30.0, "rapl": 10.0}, gaps=0, images=100)
    assert record["joules"] is None and record["joules_per_image"] is None
    assert record["method"] == "unavailable" and record["scope"] is None
    assert record["by_scope"] == {"GPU board": 30.0, "CPU package": 10.0}
    assert "never added" in record["reason"]


def test_methods_of_one_scope_add_up_and_a_gap_leaves_no_figure():
    record = energy_record({"nvml_energy_counter": 30.0, "nvml_power_sampling": 10.0}, 0, 20)
    assert record["joules"] == 40.0 and record["joules_per_image"] == 2.0
    assert record["scope"] == "GPU board"
    assert record["method"] == "nvml_energy_counter+nvml_power_sampling"
    gap = energy_record({"rapl": 5.0}, gaps=1, images=20)
    assert gap["joules"] is None and "1 energy window(s)" in gap["reason"]


def resumed_trainer(earlier: TrainState):
    """A trainer after a resume from ``earlier`` that trained one more epoch of 10 images."""
    state = TrainState(**{**earlier.__dict__, "joules": dict(earlier.joules)})
    state.epoch += 1
    state.images_seen += 10
    state.train_seconds += 1.0
    state.epoch_images = [*earlier.epoch_images, 10]
    state.epoch_seconds = [*earlier.epoch_seconds, 1.0]
    state.warmup = [*earlier.warmup, True]
    return SimpleNamespace(state=state, work=ProcessWork(earlier.epoch, earlier))


def test_a_resumed_run_reports_the_whole_run_with_this_process_apart():
    earlier = TrainState(
        epoch=1, images_seen=10, train_seconds=2.0, processes=1, wall_seconds=100.0,
        joules={"rapl": 30.0}, epoch_images=[10], epoch_seconds=[2.0], warmup=[True],
    )  # fmt: skip
    clock = iter([0.0, 5.0, 5.0, 5.0]).__next__
    account = RunAccount(SINGLE, clock=clock)
    account.measure(EnergyWindow([FixedMeter("rapl", 10.0)], clock=lambda: 0.0), "cpu")
    figures = account.close(resumed_trainer(earlier))
    assert figures["resumed"]["processes"] == 2 and figures["resumed"]["from_epoch"] == 1
    assert figures["wall_seconds"] == 105.0 and figures["process"]["wall_seconds"] == 5.0
    assert figures["images"] == 20 and figures["process"]["images"] == 10
    assert figures["images_per_s"] == pytest.approx(20 / 3.0)
    assert figures["energy"]["joules"] == 40.0 and figures["energy"]["joules_per_image"] == 2.0
    assert figures["process"]["energy"]["joules_per_image"] == 1.0


def test_a_run_resumed_under_another_energy_scope_has_no_whole_run_figure():
    earlier = TrainState(epoch=1, images_seen=10, processes=1, joules={"nvml_energy_counter": 9.0},
                         epoch_images=[10], epoch_seconds=[2.0], warmup=[True])  # fmt: skip
    account = RunAccount(SINGLE)
    account.measure(EnergyWindow([FixedMeter("rapl", 10.0)]), "cpu")
    figures = account.close(resumed_trainer(earlier))
    assert figures["energy"]["joules"] is None
    assert figures["energy"]["by_scope"] == {"CPU package": 10.0, "GPU board": 9.0}
    assert figures["process"]["energy"]["joules"] == 10.0  # this process's own scope
