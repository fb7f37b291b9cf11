"""examples/instrument_digits_cnn.py at a tiny size: its figures are PNGs of a plausible size, its table
holds every instrument, and its top eigenvalue at the final step is the dense Hessian's."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "instrument_digits_cnn.py"


def _example():
    spec = importlib.util.spec_from_file_location("instrument_digits_cnn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_example_writes_figures_and_a_table_whose_sharpness_is_the_dense_hessians(tmp_path):
    arguments = [
        "--steps",
        "12",
        "--every",
        "6",
        "--width",
        "3",
        "--hessian-batch",
        "48",
        "--out",
        str(tmp_path),
    ]
    monitor = _example().main(arguments)
    for name in ("sharpness", "spectrum", "noise"):
        width, height = _png_size(tmp_path / f"{name}.png")
        assert 300 <= width <= 1200 and 200 <= height <= 900, name
    table = pd.read_parquet(tmp_path / "monitor.parquet")
    assert set(table["step"]) == {6, 12}
    final = dict(zip(*table[table["step"] == 12][["name", "value"]].T.values))
    expected = {"loss", "probe_loss", "accuracy", "top_eigenvalue_1", "noise_norm", "smoothing_delta"}
    assert expected <= set(final) and 0 <= final["accuracy"] <= 1
    spectra = pd.read_parquet(tmp_path / "spectra.parquet")
    assert set(spectra["step"]) == {6, 12}
    assert spectra.groupby(["step", "probe"])["weight"].sum().to_numpy() == pytest.approx(1.0, rel=1e-9)

    model = monitor.model
    names = [name for name, _ in model.named_parameters()]
    shapes = [parameter.shape for parameter in model.parameters()]

    hessian_inputs = monitor.hessian_inputs.double()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        views = {n: v.view(s) for n, v, s in zip(names, flat.split([s.numel() for s in shapes]), shapes)}
        return F.cross_entropy(functional_call(model, views, (hessian_inputs,)), monitor.hessian_targets)

    point = torch.nn.utils.parameters_to_vector(model.parameters()).detach().double()
    model.double()
    spectrum = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, point))
    # Lanczos stopped at residual ≤ 1e-3·λ: some eigenvalue lies that close (float32 products aside)
    assert final["top_eigenvalue_1"] == pytest.approx(spectrum[-1].item(), rel=2e-3)
    assert final["eigen_converged"] == 1.0
