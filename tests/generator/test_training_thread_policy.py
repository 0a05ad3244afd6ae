"""Training takes the cores other work leaves free, and does not count its own recent work as other work."""

import pytest

from generator.training import trainer


def test_the_cores_this_process_keeps_busy_are_not_counted_as_other_work(monkeypatch, tmp_path):
    """Over one second the machine was busy on 2.5 cores, 1.5 of them this process's own threads: 1 core is others'."""
    tick = trainer.os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: the first line of /proc/stat, in clock ticks
    stat.write_text(f"cpu {10 * tick} 0 {5 * tick} {100 * tick} {tick} 0 0 0 0 0\ncpu0 1 2 3\n")
    clock = {"own": 7.0, "wall": 50.0}

    def one_second_passes(seconds):
        stat.write_text(f"cpu {12 * tick} 0 {int(5.5 * tick)} {100 * tick} {int(1.5 * tick)} 0 0 0 0 0\n")
        clock["own"] += 1.5
        clock["wall"] += seconds

    monkeypatch.setattr(trainer.time, "sleep", one_second_passes)
    monkeypatch.setattr(trainer.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(trainer.time, "monotonic", lambda: clock["wall"])
    assert trainer.busy_cores_of_others(1.0, stat=str(stat)) == pytest.approx(1.0)


def test_more_busy_ticks_than_the_interval_holds_count_as_every_core_busy(tmp_path, monkeypatch):
    """Tick rounding over a short interval on a full machine can count more busy time than the cores had."""
    stat = tmp_path / "stat"
    ticks = iter([0, 1000])  # 10 s of busy CPU time (at 100 ticks per second) within one second

    def one_second_passes(_):
        clock["wall"] += 1.0

    def write_next(*_):
        busy = next(ticks)
        stat.write_text(f"cpu  {busy} 0 0 5000 0 0 0 0 0 0\n")

    clock = {"wall": 0.0}
    write_next()
    monkeypatch.setattr(trainer.time, "sleep", lambda seconds: (one_second_passes(seconds), write_next()))
    monkeypatch.setattr(trainer.time, "process_time", lambda: 0.0)
    monkeypatch.setattr(trainer.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(trainer.os, "sysconf", lambda name: 100)
    assert trainer.busy_cores_of_others(1.0, stat=str(stat)) == 2.0


def test_the_kernel_counters_of_this_machine_can_be_read():
    others = trainer.busy_cores_of_others(0.05)
    if others is None:
        pytest.skip("no /proc/stat on this system")
    assert 0.0 <= others <= trainer.os.cpu_count()


def test_free_cores_is_the_cpu_count_less_the_busy_cores_of_others_at_least_one(monkeypatch):
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 4)
    for busy, free in ((0.0, 4), (1.2, 3), (2.6, 1), (9.0, 1)):
        monkeypatch.setattr(trainer, "busy_cores_of_others", lambda interval, busy=busy: busy)
        assert trainer.free_cores() == free


def test_without_the_kernel_counters_the_load_average_decides(monkeypatch, tmp_path):
    assert trainer.busy_cores_of_others(0.01, stat=str(tmp_path / "missing")) is None
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(trainer, "busy_cores_of_others", lambda interval: None)
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (1.9, 0.0, 0.0))
    assert trainer.free_cores() == 1
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert trainer.free_cores() == 2


def test_the_environment_overrides_the_measurement(monkeypatch):
    monkeypatch.setenv("TORCH_THREADS", "1")
    monkeypatch.setattr(trainer, "free_cores", lambda: pytest.fail("measured although TORCH_THREADS is set"))
    assert trainer.apply_thread_policy() == 1
