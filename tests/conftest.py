"""Test configuration: float64 available and strict dtype promotion everywhere."""

import gc
import os
import shutil
import tempfile

# jaxlib's CPU linear algebra calls SciPy's OpenBLAS, which by default starts a
# thread per core; for the small matrices of filters that is several times slower
# (measured 8x on a Lorenz-96 EKF on 2 cores). Tests run single-threaded BLAS:
# the variable covers libraries loaded from now on, threadpoolctl those already loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# The suite is bound by XLA's compile time (thousands of small programs), and LLVM's
# optimisations are most of it: compiled at -O0 the suite runs in 70% of the time (measured,
# 402 s against 567 s on 2 cores). The numbers differ from -O2 code only by rounding; the
# golden outputs, recorded at the default level, are reproduced in a process of their own
# (tests/test_golden.py). A user's own XLA_FLAGS choosing a level are kept.
# XLA:CPU's older loop emitters compile the same fusions in about half the time of its default
# MLIR fusion emitters, with the same results to rounding (measured on tests/smoothers/test_ienks.py:
# backend compilation 23 s against 46 s, with LLVM's expensive passes also left out; the whole
# suite from a fresh clone in 465 s against 712 s on 2 cores). The golden outputs are checked
# at the user's flags.
# (setdefault: xdist workers inherit the controller's environment, already changed)
os.environ.setdefault("KALMAX_TESTS_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
_FAST_COMPILE = {
    "xla_backend_optimization_level": "0",
    "xla_cpu_use_fusion_emitters": "false",
    "xla_llvm_disable_expensive_passes": "true",
}
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ["KALMAX_TESTS_USER_XLA_FLAGS"]]
    + [f"--{flag}={value}" for flag, value in _FAST_COMPILE.items() if flag not in os.environ["KALMAX_TESTS_USER_XLA_FLAGS"]]
).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(1, user_api="blas")

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

# np.testing.assert_allclose treats NaN as equal to NaN by default: a gradient and its finite
# difference both NaN passed a test that way. Every comparison in the suite must be of numbers.
_assert_allclose = np.testing.assert_allclose


def _assert_allclose_without_nan(actual, desired, *args, equal_nan=False, **kwargs):
    return _assert_allclose(actual, desired, *args, equal_nan=equal_nan, **kwargs)


np.testing.assert_allclose = _assert_allclose_without_nan

# Compiled programs are kept on disk for the run (JAX's persistent compilation cache), shared
# by the xdist workers: the caches are cleared after every module (below), and a program an
# earlier module compiled (the same filter on the same model) is then read back instead of
# compiled again. A fresh folder per run (setdefault: the workers inherit the controller's).
# (measured: the suite in 592 s instead of 641-669 s on 2 cores; the folder, about 75 MB, is
# removed at the end of the run by the process that made it.)
_OWN_CACHE = None
if "KALMAX_TESTS_COMPILATION_CACHE" not in os.environ:
    _OWN_CACHE = os.environ["KALMAX_TESTS_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="kalmax-tests-xla-")
jax.config.update("jax_compilation_cache_dir", os.environ["KALMAX_TESTS_COMPILATION_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Frees every compiled program when a test module ends.

    Each XLA:CPU executable holds a few memory mappings (code, constants, data) for as
    long as JAX caches it; one process running the whole suite compiles thousands of
    programs and crossed Linux's limit of 65,530 mappings per process (vm.max_map_count),
    after which XLA's compiler crashed (SIGSEGV / SIGABRT) in whichever test compiled next.
    """
    yield
    jax.clear_caches()
    gc.collect()


def pytest_sessionfinish(session, exitstatus):
    """Remove the compilation cache folder this process made (the controller's, shared by the workers)."""
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Modules with the longest tests (subprocesses, whole documentation pages and examples),
# measured with --durations: collected first, so that the xdist workers start on them and
# the short tests fill in at the end instead of one worker finishing a long test alone.
LONG_FIRST = ("test_golden.py", "test_benchmarks.py", "test_sharding.py", "test_docs.py", "test_examples.py", "test_loops.py",
              "test_resumable.py", "test_external.py", "test_var4d.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept
