"""Instrument a plain PyTorch training loop: a small CNN on scikit-learn's digits, torch.optim.SGD with
momentum 0.9, and momentumlab.Monitor measuring sharpness, the Hessian's spectrum and the optimizer's
search-direction noise every `--every` steps. Writes monitor.parquet, spectra.parquet and three PNGs.

    python examples/instrument_digits_cnn.py --steps 1000 --every 100 --out instrument-digits
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from momentumlab import Monitor
from momentumlab.monitor import accuracy


def main(argv: list[str] | None = None) -> Monitor:
    parser = argparse.ArgumentParser(description="Instrument a small CNN trained on the digits.")
    for flag, default in {
        "steps": 1000,
        "every": 100,
        "batch-size": 32,
        "width": 16,
        "hessian-batch": 512,
    }.items():
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=Path("instrument-digits"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    digits = load_digits()
    images, labels = (
        torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16,
        torch.tensor(digits.target),
    )
    width = args.width
    model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
    model.extend([nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(4 * width, 10)])
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True)
    monitor = Monitor(model, F.cross_entropy, optimizer, loader, every=args.every, metrics={"accuracy": accuracy},
                      hessian_batch=args.hessian_batch, density=True)  # fmt: skip

    step = 0
    while step < args.steps:  # the plain loop: the monitor adds one line
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
            monitor.step(loss)
            step += 1
            if step == args.steps:
                break

    args.out.mkdir(parents=True, exist_ok=True)
    monitor.save(args.out / "monitor.parquet")
    monitor.spectra().to_parquet(args.out / "spectra.parquet")
    table = monitor.table().pivot(index="step", columns="name", values="value")
    figures = {name: plt.subplots(figsize=(5, 3.5)) for name in ("sharpness", "spectrum", "noise")}
    axis = figures["sharpness"][1]
    axis.plot(table.index, table["top_eigenvalue_1"], "o-", label="λ_max (Lanczos)")
    axis.axhline(2 * (1 + 0.9) / args.lr, color="gray", ls="--", label="2(1+β)/η, heavy-ball stability")
    axis.set(xlabel="step", ylabel="top Hessian eigenvalue", yscale="log")
    low = min(density.support[0] for density in monitor.densities.values())
    high = max(density.support[1] for density in monitor.densities.values())
    grid = torch.linspace(low - 0.05 * (high - low), high + 0.05 * (high - low), 400)
    for at, density in monitor.densities.items():
        figures["spectrum"][1].semilogy(
            grid, density.density(grid, 0.01 * (high - low)) + 1e-6, label=f"step {at}"
        )
    figures["spectrum"][1].set(xlabel="Hessian eigenvalue λ", ylabel="spectral density (SLQ)")
    for name, label in [("noise_norm", "‖ω‖ = ‖d − ∇f‖"), ("full_grad_norm", "‖∇f‖"), ("grad_norm", "‖g‖")]:
        figures["noise"][1].plot(table.index, table[name], "o-", label=label)
    figures["noise"][1].set(
        xlabel="step", ylabel="norm", yscale="log", title=f"δ = {table.smoothing_delta.iloc[-1]:.3g}"
    )
    for name, (figure, axis) in figures.items():
        axis.legend(fontsize=7)
        figure.savefig(args.out / f"{name}.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    return monitor


if __name__ == "__main__":
    main()
