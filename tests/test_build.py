"""build_info, threads and kernel selection."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp
from fastmlp import _core


def test_build_info_reports_the_build():
    info = fastmlp.build_info()
    assert info["version"] == fastmlp.__version__
    for key in ("compiler", "flags", "openmp", "num_threads", "isa", "isas_available", "vector_width"):
        assert key in info
    assert isinstance(info["openmp"], bool)
    assert "-march=native" not in info["flags"]  # portable by default
    assert info["isa"] in info["isas_available"] and "generic" in info["isas_available"]


def test_openmp_is_on_in_this_build():
    # CI's compiler (gcc) has OpenMP: a build without it is a packaging regression here
    assert fastmlp.build_info()["openmp"] is True


def test_set_and_get_num_threads(threads):
    fastmlp.set_num_threads(1)
    assert fastmlp.get_num_threads() == 1 == fastmlp.build_info()["num_threads"]
    fastmlp.set_num_threads(2)
    assert fastmlp.get_num_threads() == 2
    top = _core.max_threads()
    assert top >= fastmlp.build_info()["cpus"]
    for bad in (0, -1, top + 1, 1000, 1_000_000, 2**70):
        with pytest.raises(ValueError, match=rf"num_threads must be an integer in \[1, {top}\]"):
            fastmlp.set_num_threads(bad)
    m = fastmlp.MLP(27, 3, 4, 8)
    with pytest.raises(ValueError, match=rf"threads must be an integer in \[1, {top}\], got 1000000"):
        m.loss(np.zeros((2, 3), np.int32), np.zeros(2, np.int32), threads=1_000_000)


THREAD_COUNT_SCRIPT = """
import os, numpy as np, fastmlp
from fastmlp import MLP, _core
def os_threads():
    return len(os.listdir("/proc/self/task"))
m = MLP(27, 8, 24, 512, init="scaled")
X = np.random.default_rng(0).integers(0, 27, (1000, 8)).astype(np.int32)
Y = np.random.default_rng(1).integers(0, 27, 1000).astype(np.int32)
counts = [os_threads()]
for threads in (1, None, 2, 3):
    _core.train_steps(m.arrays(), X, Y, np.full(5, 0.01, np.float32), batch_size=256,
                      rng_state=_core.rng_state(1), threads=threads)
    counts.append(os_threads())
print(counts)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts OS threads through Linux's /proc")
def test_each_call_runs_on_its_own_thread_count():
    # the process default is 2 on this machine, but set to 1 here; each call names its own
    # count: OpenMP starts worker threads only when a call asks for a team
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = "import fastmlp; fastmlp.set_num_threads(1)\n" + THREAD_COUNT_SCRIPT
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    base, one, default, two, three = eval(r.stdout)
    assert one == base and default == base  # threads=1 and the default (1): no team
    assert two == base + 1 and three == base + 2  # a team of 2, then of 3: 1 and 2 workers


def test_select_isa():
    before = _core.get_isa()
    try:
        _core.set_isa("generic")
        assert fastmlp.build_info()["isa"] == "generic"
        with pytest.raises(ValueError, match="not available"):
            _core.set_isa("sse9")
    finally:
        _core.set_isa(before)


def test_fma_peak_is_measured():
    one = fastmlp._core.fma_peak_gflops(1, 0.05)
    assert one > 1.0


def test_unknown_fastmlp_isa_is_not_ignored_silently():
    env = dict(os.environ, FASTMLP_ISA="sse9")
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", "import fastmlp"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode != 0 and "FASTMLP_ISA='sse9' is not one of auto" in r.stderr


def test_python_m_fastmlp_lists_the_commands():
    r = subprocess.run([sys.executable, "-m", "fastmlp"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "fastmlp.train" in r.stdout and "fastmlp.sample" in r.stdout


def test_train_steps_profile_counts_time_in_barriers(small_names):
    # the counter the benchmark prints to show how a team shares its work
    from fastmlp import MLP
    from conftest import train_steps

    m = MLP(small_names.vocab.size, 3, 10, 200, init="scaled")
    X, Y = small_names.train
    for threads in (1, 2):
        pr = np.full((threads, 2), 7.0)  # overwritten, not added to
        train_steps(m.params, X, Y, (300, 0.1), batch_size=32, rng_state=_core.rng_state(1), threads=threads,
                    profile=pr)
        assert (pr[:, 1] > 0).all() and (pr[:, 0] >= 0).all() and (pr[:, 0] <= pr[:, 1]).all()
        if threads == 1:
            assert pr[0, 0] == 0  # no team, no barriers
    with pytest.raises(ValueError, match=r"profile must have shape \(threads, 2\)"):
        train_steps(m.params, X, Y, (3, 0.1), batch_size=32, rng_state=_core.rng_state(1), threads=2,
                    profile=np.zeros((1, 2)))
