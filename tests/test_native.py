"""Building and loading the C kernels: once per machine and shape, atomically, or not at all."""

from __future__ import annotations

import multiprocessing
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import torch_threads

from momentumlab import native
from momentumlab.models.cubic_cnn import FullBatchCubicObjective

SOURCE = "models/cubic_objective.c"
SHAPE = (("WIDTH", 2), ("DIM", 3), ("PATCHES", 2), ("EXAMPLES", 16))
needs_compiler = pytest.mark.skipif(native.native_compiler() is None, reason="no C compiler")


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test builds into its own cache and forgets the libraries loaded before it."""
    monkeypatch.setenv("MOMENTUMLAB_CACHE", str(tmp_path))
    native.load_kernel.cache_clear()
    yield tmp_path / "momentumlab" / "kernels"
    native.load_kernel.cache_clear()


@needs_compiler
def test_a_kernel_is_built_once_and_then_loaded_from_the_cache(fresh_cache):
    kernel = native.load_kernel(SOURCE, SHAPE)
    assert kernel is not None and kernel.lanes() in (4, 8, 16)
    (library,) = fresh_cache.glob("cubic_objective-*.so")
    built = library.stat().st_mtime_ns
    native.load_kernel.cache_clear()
    assert native.load_kernel(SOURCE, SHAPE) is not None
    assert library.stat().st_mtime_ns == built  # loaded, not rebuilt
    assert list(fresh_cache.iterdir()) == [library]  # no temporary files left
    native.load_kernel(SOURCE, (*SHAPE[:3], ("EXAMPLES", 32)))  # another shape is another library
    assert len(list(fresh_cache.glob("*.so"))) == 2


def test_without_a_working_compiler_there_is_no_kernel_and_no_file(fresh_cache, monkeypatch):
    for compiler in ("false", "/nonexistent/cc"):  # a compiler that fails; none at all
        monkeypatch.setenv("CC", compiler)
        native.load_kernel.cache_clear()
        assert native.load_kernel(SOURCE, SHAPE) is None
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())


@needs_compiler
def test_a_library_that_does_not_load_is_built_again(fresh_cache, tmp_path, monkeypatch):
    """A file in the cache that is not a library (a damaged disk) is replaced by a fresh build."""
    assert native.load_kernel(SOURCE, SHAPE) is not None
    (library,) = fresh_cache.glob("*.so")
    other = tmp_path / "other"  # another cache, holding garbage under the library's name
    damaged = other / "momentumlab" / "kernels" / library.name
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a shared library")
    monkeypatch.setenv("MOMENTUMLAB_CACHE", str(other))
    native.load_kernel.cache_clear()
    kernel = native.load_kernel(SOURCE, SHAPE)
    assert kernel is not None and kernel.lanes() in (4, 8, 16)
    assert damaged.read_bytes() != b"not a shared library"


def test_momentumlab_native_0_keeps_the_torch_path_with_equal_results(monkeypatch):
    inputs = torch.randn(20, 2, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1.0, -1.0] * 10)
    weight = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv("MOMENTUMLAB_NATIVE", "0")
    off = FullBatchCubicObjective(inputs, labels, width=2, l2=0.0)
    assert off.engine == "torch"
    reference = FullBatchCubicObjective(inputs, labels, width=2, l2=0.0, compiled=False)
    torch.testing.assert_close(off.loss_and_gradient(weight), reference.loss_and_gradient(weight))
    monkeypatch.setenv("MOMENTUMLAB_NATIVE", "1")
    native.load_kernel.cache_clear()
    on = FullBatchCubicObjective(inputs, labels, width=2, l2=0.0)
    assert on.engine == ("compiled" if native.native_compiler() else "torch")
    torch.testing.assert_close(on.loss_and_gradient(weight), reference.loss_and_gradient(weight))


def _compiler_has_openmp(folder: Path) -> bool:
    source = folder / "probe.c"
    source.write_text("int f(void) { return 0; }\n")
    command = [
        native.native_compiler(),
        "-fopenmp",
        "-shared",
        "-fPIC",
        str(source),
        "-o",
        str(folder / "probe.so"),
    ]
    return subprocess.run(command, check=False, capture_output=True).returncode == 0


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtime files mapped into this process."""
    return {
        line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line
    }


@needs_compiler
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mapped files (Linux)")
def test_the_kernel_runs_on_the_openmp_runtime_torch_has_loaded(fresh_cache, tmp_path):
    if not _compiler_has_openmp(tmp_path):
        pytest.skip("the compiler has no OpenMP: the kernel runs on pthreads")
    runtimes = _openmp_runtimes()
    kernel = native.load_kernel(SOURCE, SHAPE)
    assert kernel.openmp() == 1
    assert _openmp_runtimes() == runtimes  # no second runtime: torch's libgomp.so.1 serves the kernel


def _objective_in_child(objective, weight, results) -> None:
    torch.set_num_threads(2)  # as the parent: OpenMP's workers would be needed, and the fork has none
    results.put((native.openmp_usable(), objective.loss_and_gradient(weight)[1].tolist()))  # floats: exact


@needs_compiler
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_process_forked_after_the_kernel_ran_on_openmp_threads_gets_the_same_bits():
    """libgomp's workers do not survive a fork, and a parallel region in the child would wait for them
    forever: there the kernel runs on pthreads, with the same result."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(3079, 2, 6, generator=generator)
    labels = torch.randint(0, 2, (3079,), generator=generator).float() * 2 - 1
    weight = torch.randn(3, 6, generator=generator) * 0.3
    objective = FullBatchCubicObjective(inputs, labels, width=3, l2=0.0)
    with torch_threads(2):
        expected = objective.loss_and_gradient(weight)[1].clone()  # OpenMP's workers start here
        torch.mm(torch.ones(256, 256), torch.ones(256, 256))  # and torch's own parallel op
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_objective_in_child, args=(objective, weight, results))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the kernel hung in a forked process")
    usable, gradient = results.get(timeout=10)
    assert native.openmp_usable() and not usable
    torch.testing.assert_close(torch.tensor(gradient), expected, rtol=0, atol=0)
