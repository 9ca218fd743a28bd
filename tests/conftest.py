"""Test-session settings.

Torch ops run on one thread: the networks in these tests are small, and on a 2-core machine that is
busy (CI, or several jobs at once) two spinning intra-op threads made one training test 7x slower
(59 s against 9 s measured). The limit is set through OMP_NUM_THREADS before torch is imported,
not with torch.set_num_threads: an explicit thread count made torch's OpenMP pool assert ("Invalid
thread pool") in the forked child of test_torchff's fork test. The torch force field keeps its own
chunk threads (its ``threads=``).

``--device cuda`` runs the device-dependent tests (those taking the ``device`` fixture: the torch
force field against OpenMM, sample_molecule) on that device; they are skipped where it is missing.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="torch device of the device-dependent tests (torch force field, sample_molecule), e.g. "
                          "cuda or cuda:1 (default cpu); tests are skipped when it is not available here")


def _available(name: str) -> bool:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    backend = getattr(torch, device.type, None)
    return bool(backend is not None and getattr(backend, "is_available", lambda: False)())


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Commands run in-process (``main([...])``) set torch's threads (``--threads``, default 2); put them back,
    else every later test runs two spinning threads on a busy 2-core machine (the README's quick start took
    33-256 s instead of 4 s after the CLI tests)."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def device(request):
    """The torch device of ``--device`` (skips the test when it is not available here)."""
    import torch

    name = request.config.getoption("--device")
    if not _available(name):
        pytest.skip(f"--device {name} is not available on this machine")
    return torch.device(name)
