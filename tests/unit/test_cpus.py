"""A worker process's share of the host's cores (workers.host.cpus): affinity, cgroup quota, split."""

from __future__ import annotations

import os

from workers.host import cpus


def test_the_cgroup_quota_in_cores_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cpus.quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.quota(tmp_path) is None  # no limit
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.quota(v1) == 1.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.quota(v1) is None
    assert cpus.quota(tmp_path / "absent") is None
    (tmp_path / "cpu.max").write_text("garbage")
    assert cpus.quota(tmp_path) is None  # unreadable: no limit, never an error


def test_usable_cores_is_the_fewest_of_the_affinity_and_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert cpus.usable_cores(tmp_path / "absent") == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: still one
    assert cpus.usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")  # a quota above the cores
    assert cpus.usable_cores(tmp_path) == affinity


def test_processes_split_the_cores_and_each_gets_one_at_least():
    assert cpus.share(8, cores=16) == 2
    assert cpus.share(3, cores=16) == 5
    assert cpus.share(4, cores=2) == 1
    assert cpus.share(0, cores=4) == 4


class Fake:
    """The stage thread's run time and run delay (ns), and the machine's other ready threads."""

    def __init__(self):
        self.run = self.delay = 0
        self.ready, self.set = 0, []

    def after(self, run_ms: float, delay_ms: float = 0.0, ready: int | None = None) -> None:
        self.run += int(run_ms * 1e6)
        self.delay += int(delay_ms * 1e6)
        if ready is not None:
            self.ready = ready


def policy(fake: Fake, cores: int = 2, fixed: int = 0) -> cpus.StageThreads:
    return cpus.StageThreads(cores, fake.set.append, fixed=fixed, limit=0.15, window_ns=50_000_000,
                             schedstat=lambda: (fake.run, fake.delay), others=lambda: fake.ready)


def test_the_stage_takes_all_cores_undisturbed_and_fewer_while_other_threads_want_them():
    fake = Fake()
    tune = policy(fake)
    tune()
    assert fake.set == [2]  # undisturbed: all the cores
    fake.after(100, 2)  # a pass that waited 2 % of its ready time for a core
    tune()
    assert fake.set == [2] and tune.current == 2  # nothing set again
    fake.after(60, 40, ready=1)  # waited 40 %: another process is ready to run
    tune()
    assert fake.set == [2, 1] and tune.reductions == 1
    for _ in range(5):  # one thread while the other process is ready, whatever the delays
        fake.after(100, 0)
        tune()
    assert fake.set == [2, 1]
    fake.after(100, 0, ready=0)  # nothing else ready before a pass: all the cores again
    tune()
    assert fake.set == [2, 1, 2]
    fake.after(20, 20, ready=0)  # under the window (50 ms): not judged yet
    tune()
    fake.after(20, 0)
    tune()  # 40 ms on a core, 20 waiting: 33 %, judged over the whole 60 ms
    assert fake.set == [2, 1, 2, 1] and tune.reductions == 2


def test_on_many_cores_the_stage_leaves_the_ready_threads_theirs():
    fake = Fake()
    tune = policy(fake, cores=16)
    tune()
    fake.after(50, 50, ready=3)
    tune()
    assert fake.set == [16, 13]
    fake.after(50, 50, ready=40)  # more ready threads than cores: still one
    tune()
    fake.after(50, 0, ready=0)
    tune()
    assert fake.set == [16, 13, 16]
    fake.after(50, 50, ready=40)
    tune()
    assert fake.set[-1] == 1


def test_a_fixed_count_a_single_core_and_a_kernel_without_run_delays_never_change():
    fake = Fake()
    fixed = policy(fake, cores=4, fixed=3)
    one = policy(fake, cores=1)
    blind = cpus.StageThreads(4, fake.set.append, schedstat=lambda: None, others=lambda: 9)
    for _ in range(3):
        fixed()
        one()
        blind()
        fake.after(50, 50, ready=3)
    assert fake.set == [3, 1, 4] and fixed.reductions == one.reductions == blind.reductions == 0


def test_the_kernel_figures_read_here():
    stat = cpus.thread_schedstat()
    assert stat is None or (stat[0] > 0 and stat[1] >= 0)
    assert cpus.runnable_others() >= 0
