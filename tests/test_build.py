"""build_info, threads and kernel selection."""
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
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        fastmlp.set_num_threads(0)


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


def test_python_m_fastmlp_lists_the_commands():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fastmlp"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "fastmlp.train" in r.stdout and "fastmlp.sample" in r.stdout
