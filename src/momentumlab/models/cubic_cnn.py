"""The two-layer cubic CNN of Jelassi & Li and its regularized logistic objective (SPEC §1).

f_W(X) = Σ_r Σ_j ⟨w_r, X[j]⟩³,   L(W) = (1/N) Σ_i log(1 + exp(−y_i f_W(X_i))) + (λ/2)‖W‖²_F.

:class:`CubicCNN` is the plain module (autograd works through it). :class:`FullBatchCubicObjective`
is the training fast path: the closed-form gradient
∇_{w_r} L = (1/N) Σ_i −y_i σ(−y_i f_i) Σ_j 3⟨w_r, X_i[j]⟩² X_i[j] + λ w_r
computed in one pass over the data. On the CPU in float32 a C kernel (`cubic_objective.c`, built by
:mod:`momentumlab.native`) does the whole pass tile by tile with its products in registers; otherwise (a
GPU, float64, no C compiler) torch does it per cache-sized chunk of examples: the forward product, the
logistic weights and the gradient product, in preallocated buffers.
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import nn
from torch.nn import functional as F

from momentumlab.native import load_kernel, openmp_usable

# Data per chunk on the CPU: up to the 32 MiB L3 cache the data is one chunk. Chunks of 0.5-4 MiB
# measured no faster with one thread, and with two threads on a loaded machine each chunk's small ops
# cost thread wake-ups (2 MiB chunks: 2.3x the CPU time per step).
CPU_CHUNK_BYTES = 2**25
# Examples per tile of the C kernel (a multiple of its 4, 8 or 16 lanes): 16 and 32 measured alike.
KERNEL_EXAMPLES = 16
# The kernel keeps m·P·KERNEL_EXAMPLES floats and 3m vectors of (at most) 16 floats on its stack;
# larger shapes use torch.
KERNEL_STACK_BYTES = 2**20


class CubicCNN(nn.Module):
    """W ∈ R^{m×d}; the second layer is fixed to ones."""

    def __init__(self, width: int, dim: int, init_std: float, generator: torch.Generator | None = None):
        super().__init__()
        init = (
            torch.randn(width, dim, generator=generator, dtype=torch.float64) * init_std
        )  # w_r ~ N(0, σ0² I)
        self.weight = nn.Parameter(init.to(torch.get_default_dtype()))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """f_W(X) for inputs of shape (N, P, d); returns shape (N,)."""
        return cubic_outputs(self.weight, inputs)


def cubic_outputs(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """f_W(X_i) = Σ_r Σ_j ⟨w_r, X_i[j]⟩³ for inputs of shape (N, P, d)."""
    return (inputs @ weight.T).pow(3).sum(dim=(1, 2))


def logistic_objective(
    outputs: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, l2: float
) -> torch.Tensor:
    """L = mean softplus(−y f) + (λ/2)‖W‖²_F."""
    return F.softplus(-labels * outputs).mean() + 0.5 * l2 * weight.pow(2).sum()


def logistic_loss_bound(margins: torch.Tensor) -> torch.Tensor:
    """A finite upper bound on mean softplus(margins) over the last axis, as torch computes it, where it can
    show that mean finite; NaN or ∞ where it cannot (a margin NaN or infinite, 4N(max_i |m_i| + 1) past
    the largest float, or N > 1/ε).

    Each computed term lies in [0, max(m_i, 0) + 1], so the float sum of N of them is at most
    (1 + ε)^N · N(max_i |m_i| + 1) ≤ e·N(max_i |m_i| + 1) for N ≤ 1/ε, in any order, and so is the mean:
    B = 4N(max_i |m_i| + 1) bounds both with room for its own rounding. Float addition is monotone, so
    where B + (λ/2)‖W‖² is finite, so is L. One pass of abs and max, against the softplus's exp and log1p
    (10% of a default full-batch step)."""
    n = margins.shape[-1]
    if n * torch.finfo(margins.dtype).eps > 1:
        return margins.new_full(margins.shape[:-1], math.inf)
    return margins.abs().amax(dim=-1).add_(1).mul_(4 * n)  # B = 4N(max_i |m_i| + 1)


def cubic_loss_and_gradient(
    weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form (L, ∇L) on any batch; allocates its temporaries (used for minibatches)."""
    n = labels.shape[0]
    projections = inputs @ weight.T  # ⟨w_r, X_i[j]⟩, shape (n, P, m)
    outputs = projections.pow(3).sum(dim=(1, 2))
    sigma = torch.sigmoid(-labels * outputs)  # ℓ_i = sigmoid(−y_i f_i)
    coefficient = (-3.0 / n) * labels * sigma
    gradient = torch.einsum("npm,npd->md", projections.square() * coefficient[:, None, None], inputs)
    return logistic_objective(outputs, labels, weight, l2), gradient + l2 * weight


class FullBatchCubicObjective:
    """Full-batch (L, ∇L) of the cubic CNN on fixed data, without autograd or per-step allocation.

    One pass over the data per call. With `compiled` (the default) on the CPU in float32, the C kernel
    holds the data in its tiles; otherwise the examples are split into chunks (contiguous (d, chunk·P)
    copies, made once) and each chunk's forward product, cubes, logistic weights and gradient product run
    back to back, so the gradient product reads the chunk while it is still in cache. On a GPU the data
    is one chunk. `engine` says which: "compiled" or "torch".
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        width: int,
        l2: float,
        chunk: int | None = None,
        compiled: bool = True,
    ):
        n, patches, dim = inputs.shape
        self.n, self.patches, self.width, self.l2 = n, patches, width, l2
        like = {"dtype": inputs.dtype, "device": inputs.device}
        self.neg_labels = -labels
        self.outputs = torch.empty(n, **like)  # f_W(X_i) at the last evaluated W
        self._margins = torch.empty(n, **like)
        self._kernel = _cubic_kernel(width, dim, patches, inputs) if compiled else None
        self.engine = "torch" if self._kernel is None else "compiled"
        if self._kernel is not None:
            self._labels = labels.contiguous()
            self._tiles = _kernel_tiles(inputs, self._kernel.lanes())
            self._gradient = torch.empty(width, dim, **like)
            self._scratch = torch.empty(0, **like)  # the kernel's sums, sized when used
            return
        if chunk is None:
            chunk = n if inputs.device.type == "cuda" else max(1, CPU_CHUNK_BYTES // inputs[0].nbytes)
        self.bounds = [(first, min(first + chunk, n)) for first in range(0, n, chunk)]
        self.inputs_t = [
            inputs[first:last].reshape(-1, dim).T.contiguous() for first, last in self.bounds
        ]  # (d, chunk·P) each
        self.gradient_weights = labels * (-3.0 / n)  # −3 y_i / N; times ℓ_i it weighs example i's gradient
        rows = min(chunk, n)
        self._projections = torch.empty(width * rows * patches, **like)
        self._squares = torch.empty(width * rows * patches, **like)
        self._patch_outputs = torch.empty(rows * patches, **like)
        self._coefficient = torch.empty(rows, **like)
        self._gradient_t = torch.empty(dim, width, **like)  # ∇L transposed: this product order is faster

    def loss_and_gradient(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (L(W), ∇L(W)); the gradient tensor is a buffer reused by the next call."""
        gradient = self._pass(weight)
        loss = self._loss(weight)
        if self.l2:
            gradient.add_(weight, alpha=self.l2)
        return loss, gradient

    def gradient_and_finiteness(self, weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Return (∇L(W), whether L(W) is finite), for a step that logs nothing: L itself is computed only
        where :func:`logistic_loss_bound` cannot show it finite. The gradient is :meth:`loss_and_gradient`'s."""
        gradient = self._pass(weight)
        penalty = self._penalty(weight) if self.l2 else 0.0
        finite = math.isfinite(logistic_loss_bound(self._margins) + penalty) or math.isfinite(
            self._loss(weight)
        )
        if self.l2:
            gradient.add_(weight, alpha=self.l2)
        return gradient, finite

    def _pass(self, weight: torch.Tensor) -> torch.Tensor:
        """f into `outputs`, −y_i f_i into the margins, and the loss term's gradient (returned)."""
        if self._kernel is not None:
            _check_kernel_buffer("weight", weight, tuple(self._gradient.shape))  # its own buffers fit
            gradient = self._run_kernel(weight, self.outputs, self._gradient, runs=1)
        else:
            gradient = self._torch_pass(weight)
        torch.mul(self.outputs, self.neg_labels, out=self._margins)  # −y_i f_i
        return gradient

    def _loss(self, weight: torch.Tensor) -> torch.Tensor:
        """L(W) from the margins of the last pass, at `weight`."""
        loss = F.softplus(self._margins).mean()
        if self.l2:
            loss = loss + self._penalty(weight)
        return loss

    def _penalty(self, weight: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.l2 * weight.square().sum()  # (λ/2)‖W‖²

    def kernel_pass(
        self, weight: torch.Tensor, outputs: torch.Tensor, gradient: torch.Tensor
    ) -> torch.Tensor:
        """f_W(X_i) into `outputs` (N,) and the loss term's gradient into `gradient` (m, d), by the C kernel
        (engine "compiled"); returns `gradient`. Several runs on this data: weights (R, m, d), outputs
        (R, N) and gradients (R, m, d), in one pass over the data, each run's bits as alone."""
        if self._kernel is None:
            raise ValueError(f"kernel_pass needs the compiled engine; this objective's is {self.engine!r}")
        runs = weight.shape[:-2] if weight.dim() == 3 else ()
        shape = (*runs, *self._gradient.shape)
        _check_kernel_buffer("weight", weight, shape)
        _check_kernel_buffer("gradient", gradient, shape)
        _check_kernel_buffer("outputs", outputs, (*runs, self.n))
        return self._run_kernel(weight, outputs, gradient, math.prod(runs))

    def _run_kernel(
        self, weight: torch.Tensor, outputs: torch.Tensor, gradient: torch.Tensor, runs: int
    ) -> torch.Tensor:
        """The kernel's pass for `runs` runs on checked buffers; returns `gradient`."""
        weight = weight.detach().contiguous()
        threads = torch.get_num_threads()  # the kernel uses torch's thread count
        needed = self._kernel.scratch_floats(runs, threads)  # lane sums and the other threads' sums
        if len(self._scratch) < needed:
            self._scratch = torch.empty(needed, dtype=torch.float32)  # torch aligns it to 64 bytes
        self._kernel.cubic_objective(
            self._tiles.data_ptr(),
            self._labels.data_ptr(),
            weight.data_ptr(),
            runs,
            self.n,
            threads,
            openmp_usable(),
            outputs.data_ptr(),
            gradient.data_ptr(),
            self._scratch.data_ptr(),
        )
        return gradient

    def _torch_pass(self, weight: torch.Tensor) -> torch.Tensor:
        """f into `outputs` and the loss term's gradient, chunk by chunk with torch."""
        m, patches = self.width, self.patches
        for index, ((first, last), inputs_t) in enumerate(zip(self.bounds, self.inputs_t)):
            size = last - first
            projections = self._projections[: m * size * patches].view(m, size * patches)
            squares = self._squares[: m * size * patches].view(m, size * patches)
            torch.mm(weight, inputs_t, out=projections)  # ⟨w_r, X_i[j]⟩
            torch.mul(projections, projections, out=squares)
            cubes = projections.mul_(squares)
            patch_outputs = self._patch_outputs[: size * patches]
            torch.sum(cubes, dim=0, out=patch_outputs)  # Σ_r ⟨w_r, X_i[j]⟩³
            outputs = self.outputs[first:last]
            torch.sum(patch_outputs.view(size, patches), dim=1, out=outputs)  # f_i
            coefficient = torch.mul(outputs, self.neg_labels[first:last], out=self._coefficient[:size])
            coefficient.sigmoid_().mul_(
                self.gradient_weights[first:last]
            )  # −3 y_i ℓ_i / N, ℓ_i = σ(−y_i f_i)
            squares.view(m, size, patches).mul_(coefficient.view(1, size, 1))
            if index == 0:  # ∇_{w_r} L = Σ_i Σ_j (−3 y_i ℓ_i / N) ⟨w_r, X_i[j]⟩² X_i[j]
                torch.mm(inputs_t, squares.T, out=self._gradient_t)
            else:
                self._gradient_t.addmm_(inputs_t, squares.T)
        return self._gradient_t.T


def _check_kernel_buffer(name: str, tensor: torch.Tensor, needed: tuple[int, ...]) -> None:
    """A ValueError naming `name` unless `tensor` has the shape `needed`, float32, on the CPU, and (written
    by the kernel, which writes raw memory) is contiguous; a weight is copied when it is not."""
    layout = (tuple(tensor.shape), tensor.dtype, tensor.device.type)
    contiguous = name == "weight" or tensor.is_contiguous()
    if layout != (needed, torch.float32, "cpu") or not contiguous:
        written = "" if name == "weight" else ", contiguous"
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)}, {tensor.dtype} on {tensor.device.type}: the "
            f"objective's kernel needs shape {needed}, float32, on the CPU{written}"
        )


def _cubic_kernel(width: int, dim: int, patches: int, inputs: torch.Tensor) -> ctypes.CDLL | None:
    """The C kernel for these shapes, where it applies (CPU, float32, a stack that fits) and builds."""
    if inputs.device.type != "cpu" or inputs.dtype != torch.float32:
        return None
    if 4 * width * (patches * KERNEL_EXAMPLES + 3 * 16) > KERNEL_STACK_BYTES:
        return None
    constants = (("WIDTH", width), ("DIM", dim), ("PATCHES", patches), ("EXAMPLES", KERNEL_EXAMPLES))
    kernel = load_kernel("models/cubic_objective.c", constants)
    if kernel is not None:
        pointer, size = ctypes.c_void_p, ctypes.c_long
        arguments = [pointer] * 3 + [size, size, size, ctypes.c_int] + [pointer] * 3  # see cubic_objective.c
        kernel.cubic_objective.argtypes = arguments
        kernel.cubic_objective.restype = None
        kernel.scratch_floats.argtypes, kernel.scratch_floats.restype = [size, size], size
    return kernel


def _kernel_tiles(inputs: torch.Tensor, lanes: int) -> torch.Tensor:
    """`inputs` (N, P, d) in the kernel's layout: tiles of KERNEL_EXAMPLES examples (zero-padded), each
    (blocks, d, lanes) with column p·KERNEL_EXAMPLES + e of a tile at lane (column % lanes) of its block."""
    n, patches, dim = inputs.shape
    tiles = -(-n // KERNEL_EXAMPLES)
    padded = inputs.new_zeros(tiles * KERNEL_EXAMPLES, patches, dim)
    padded[:n] = inputs
    columns = padded.view(tiles, KERNEL_EXAMPLES, patches, dim).transpose(1, 2)  # (tiles, P, E, d)
    blocks = columns.reshape(tiles, patches * KERNEL_EXAMPLES // lanes, lanes, dim)
    return blocks.transpose(2, 3).contiguous()
