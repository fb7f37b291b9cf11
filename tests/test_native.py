"""Building and loading the C kernels: once per machine and shape, atomically, or not at all."""

from __future__ import annotations

import pytest
import torch

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
