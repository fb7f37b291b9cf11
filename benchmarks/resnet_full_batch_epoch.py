"""Images per second of one full-batch GD epoch of ResNet-18 on CIFAR-sized data: fp32 vs bf16/channels-last.

Both paths are `momentumlab.train.images.accumulate_gradient` (exact full-batch gradient over chunks) plus
one GD step; the data are generated (N × 3 × 32 × 32). The project's GPU path is bf16 autocast with the
channels-last memory format; the baseline is plain fp32 in the default layout, timed in the same run.
Target (issue 4): 50 000 images in ≤ 5 s on an H100. Without CUDA it times fp32 only on a small N.

    python benchmarks/resnet_full_batch_epoch.py [--images 50000] [--chunk 2500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from momentumlab.models.resnet import ResNet18
from momentumlab.optim import GD
from momentumlab.train.images import accumulate_gradient


def epoch_seconds(images, labels, chunk: int, bf16: bool, channels_last: bool, repeats: int) -> float:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = ResNet18(num_classes=10, in_channels=3, norm="none").to(
        images.device, memory_format=memory_format
    )
    optimizer = GD(model.parameters(), lr=0.01)
    data = images.contiguous(memory_format=memory_format)

    def precision() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def epoch() -> None:
        accumulate_gradient(model, data, labels, chunk, precision, memory_format)
        optimizer.step()

    epoch()  # warm-up: kernels, allocator
    best = float("inf")
    for _ in range(repeats):
        if images.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        epoch()
        if images.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=None, help="default: 50000 on CUDA, 256 on CPU")
    parser.add_argument("--chunk", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    n = args.images or (50_000 if cuda else 256)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 32, 32, generator=generator).to(device)
    labels = torch.randint(0, 10, (n,), generator=generator).to(device)
    name = torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA: fp32 only)"
    print(f"ResNet-18 (no normalization), one full-batch GD epoch of {n} generated 32×32 images on {name}")
    fp32 = epoch_seconds(images, labels, args.chunk, bf16=False, channels_last=False, repeats=args.repeats)
    print(f"fp32, default layout:      {fp32:8.3f} s/epoch  {n / fp32:10.0f} images/s")
    if cuda:
        fast = epoch_seconds(images, labels, args.chunk, bf16=True, channels_last=True, repeats=args.repeats)
        print(f"bf16 + channels-last:      {fast:8.3f} s/epoch  {n / fast:10.0f} images/s")
        print(
            f"speed-up: {fp32 / fast:.2f}x; 50 000 images would take {50_000 / (n / fast):.2f} s (target <= 5 s)"
        )


if __name__ == "__main__":
    main()
