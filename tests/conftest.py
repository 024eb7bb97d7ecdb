"""Shared test helpers: tolerances as |got - ref| <= atol + rtol*|ref|, worst index reported."""
import os
import zlib

import numpy as np
import pytest

# tests/hostile.py (the machinery of the bad-input matrices) asserts as a test module does:
# pytest rewrites its asserts, so a failure shows the values compared
pytest.register_assert_rewrite("hostile")


def assert_close(got, ref, atol=1e-4, rtol=1e-4, what="value"):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    err = np.abs(got - ref) - (atol + rtol * np.abs(ref))
    if err.size and err.max() > 0:
        i = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(
            f"{what}: worst at index {tuple(int(v) for v in i)}: got {got[i]!r}, ref {ref[i]!r}, "
            f"|diff| {abs(got[i] - ref[i]):.3g} > atol {atol} + rtol {rtol} * |ref|")


@pytest.fixture
def rng(request):
    """A seeded generator; the seed is printed (and shown on failure) so runs can be repeated."""
    # crc32 of the test id: the same seed in every process (Python's hash() of a str is salted)
    seed = int(os.environ.get("SALNP_TEST_SEED", "0")) or (zlib.crc32(request.node.nodeid.encode()) % 2**31)
    print(f"seed={seed} (set SALNP_TEST_SEED={seed} to repeat)")
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _restore_threads():
    import salnp
    n = salnp.get_num_threads()
    yield
    salnp.set_num_threads(n)


# ---- strict dependencies (scripts/test.sh sets SALNP_STRICT_DEPS=1) -------------------
# A test that skips because a package or a data set is missing hides exactly what a clean
# machine lacks, so under the project's own test command every skip fails the run, except
# a skip whose reason starts with "platform:" (a CPU feature this machine does not have).
def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("SALNP_STRICT_DEPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    bad = []
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if not reason.startswith("platform:"):
            bad.append(f"{rep.nodeid}: {reason}")
    if bad:
        reporter.write_line(f"SALNP_STRICT_DEPS=1: {len(bad)} test(s) skipped for a missing "
                            "package or data set (declare it in pyproject.toml's extras or "
                            "scripts/setup.sh):", red=True)
        for line in sorted(set(bad))[:40]:
            reporter.write_line("  " + line)
        session.exitstatus = 1


def _isas():
    """The kernel instruction sets this CPU runs, lowest first ("base", "avx2", "avx512")."""
    from salnp import _core

    levels = ("base", "avx2", "avx512")
    _core.set_isa(None)
    return levels[:levels.index(_core.get_isa()) + 1]


@pytest.fixture(params=_isas())
def isa(request):
    """Runs the test once per kernel ISA the CPU has (salnp._core.set_isa caps the
    dispatch), so an AVX-512 machine also tests the AVX2 and portable kernels."""
    from salnp import _core

    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(None)
