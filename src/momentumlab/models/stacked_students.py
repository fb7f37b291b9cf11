"""R students of one architecture evaluated and differentiated at once, with a hand-written backward pass.

The parameters of R networks of :mod:`momentumlab.models.mlp` are rows of one (R, P) tensor, in the
layout the products read (:meth:`StackedStudents.pack`; :meth:`StackedStudents.unpack` gives views
named and shaped as the module's parameters). :meth:`StackedStudents.loss_and_gradient` returns every
run's mean logistic loss L_r = (1/B) Σ_i softplus(−y_i f_r(x_i)) on its own batch and ∇L_r, the
gradient autograd gives, in the same layout, from a few batched products (`bmm`) per layer and no
autograd graph. An optimizer step is then one elementwise pass over (R, P) tensors
(:mod:`momentumlab.optim.stacked_update`).

Notation: g_i = ∂L/∂f_i = −y_i σ(−y_i f_i) / B; M = 1[h > 0], the ReLU's derivative, taken in place
from the hidden features h once the forward pass no longer needs them (a CNN's, with the products it
enters, by :mod:`momentumlab.models.masked_error`).

- MLP: each hidden layer is stored as one block [W_lᵀ; b_l] (fan_in + 1, units). The first layer reads
  the inputs with a column of ones appended, [x, 1], so its weight and bias are one product and one
  gradient product. A layer's gradient [∇W; ∇b]ᵀ = (g ⊙ [h, 1])ᵀ δ' (δ = g ⊙ δ') comes out in the
  block's layout, and the last layer's δ' = M ⊙ a (a: the read-out weights) is never formed:
  ∇W_Dᵀ = ((g ⊙ h_{D−1})ᵀ M) ⊙ a and the error sent down is M(a ⊙ W_D). (With the units as the
  product's long output axis, this gradient product ran 2.2x faster on the CPU than with them as rows,
  with the same bits.)
- CNN: the first convolution is stored as one block [W_1, b_1] (channels, k + 1), the other
  parameters as the module's. Every feature map is channels-first over a padded layout, each example's
  d positions with the convolution's zero padding around them (d + k − 1 columns), all examples one
  after another, so a convolution is a sum over its k taps of (C × C)·(C × positions) products with
  shifted column ranges and needs no copies of windows (with the positions as the long, contiguous axis
  these products ran 15× faster than positions-as-rows on the CPU). The input layer's windows
  [x_{p−left..p+right}, 1] are one (k+1, positions) matrix; padding positions are zero there and are
  zeroed after every later convolution (which writes garbage across examples there); the read-out
  weights are zero on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from momentumlab.models.masked_error import mask_error, top_error


def _count(shapes: Mapping[str, torch.Size], prefix: str) -> int:
    """Layers named `prefix`0, `prefix`1, …"""
    return sum(1 for name in shapes if name.startswith(prefix) and name.endswith(".weight"))


@dataclass(frozen=True)
class _View:
    """Where one module parameter lies in a run's row: its shape, strides and offset."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int


def _contiguous(shape: torch.Size, offset: int) -> _View:
    """A parameter stored as the module stores it, from `offset`."""
    strides = [1]
    for size in reversed(shape[1:]):
        strides.insert(0, strides[0] * size)
    return _View(tuple(shape), tuple(strides), offset)


class StackedStudents:
    """Loss and gradient of R stacked students of one architecture (MLP or 1-D CNN) on (R, B, d) inputs.

    `shapes` are one run's parameter shapes by the module's names; `dim` is d."""

    def __init__(self, shapes: Mapping[str, torch.Size], dim: int):
        self.dim = dim
        self.convolutional = "convolutions.0.weight" in shapes
        self.depth = _count(shapes, "convolutions." if self.convolutional else "hidden.")
        if self.convolutional:
            self.kernel = shapes["convolutions.0.weight"][-1]
            self.left = (self.kernel - 1) // 2  # padding='same' puts the odd extra zero on the right
            self.span = dim + self.kernel - 1  # columns of one example in the padded layout
        self.blocks, self.views = self._layout(shapes)
        self.block_sizes = [math.prod(block) for block in self.blocks]
        self.size = sum(self.block_sizes)  # P
        self._buffers: dict[str, torch.Tensor] = {}  # kept between calls (CNN feature maps)

    def _layout(self, shapes: Mapping[str, torch.Size]) -> tuple[list[tuple[int, ...]], dict[str, _View]]:
        """The blocks of a run's row, in order, and each module parameter's view into the row."""
        blocks, views, offset = [], {}, 0
        for name, shape in shapes.items():
            layer = name.rsplit(".", 1)[0]
            if not self.convolutional and layer.startswith("hidden."):
                if name.endswith(".weight"):  # [Wᵀ; b], (fan_in + 1, units)
                    units, fan_in = shape
                    blocks.append((fan_in + 1, units))
                    views[name] = _View((units, fan_in), (1, units), offset)
                    views[f"{layer}.bias"] = _View((units,), (1,), offset + fan_in * units)
                    offset += (fan_in + 1) * units
            elif self.convolutional and layer == "convolutions.0":
                if name.endswith(".weight"):  # the first convolution's [W_1, b_1], (channels, k + 1)
                    channels, _, k = shape
                    blocks.append((channels, k + 1))
                    views[name] = _View((channels, 1, k), (k + 1, k, 1), offset)
                    views[f"{layer}.bias"] = _View((channels,), (k + 1,), offset + k)
                    offset += channels * (k + 1)
            else:
                blocks.append(tuple(shape))
                views[name] = _contiguous(shape, offset)
                offset += shape.numel()
        return blocks, {name: views[name] for name in shapes}

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each module parameter's (R, *shape) view into `flat` (R, P; each row contiguous)."""
        row, start = flat.stride(0), flat.storage_offset()
        return {
            name: flat.as_strided((len(flat), *view.shape), (row, *view.strides), start + view.offset)
            for name, view in self.views.items()
        }

    def pack(self, parameters: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The (R, P) rows of stacked parameters {name: (R, *shape)}."""
        some = next(iter(parameters.values()))
        flat = some.new_empty(len(some), self.size)
        for name, view in self.unpack(flat).items():
            view.copy_(parameters[name])
        return flat

    def _blocks(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The (R, *block) views of :attr:`blocks` into `flat`."""
        parts = flat.split(self.block_sizes, dim=1)
        return [part.view(len(flat), *block) for part, block in zip(parts, self.blocks)]

    def features(self, inputs: torch.Tensor, kept: bool = False) -> torch.Tensor:
        """What the first product reads: [x, 1] (R, B, d+1) for an MLP; for a CNN, channels-first, the
        windows [x_{p−left..p+right}, 1] of each position of the padded layout (zero on padding
        positions), with k−1 zero columns around them all: (R, k+1, left + B·(d+k−1) + right).

        With `kept` (each minibatch's), a CNN's are written into a buffer kept between calls, whose zeros
        and ones are set when it is made: only the windows are written, and the next call overwrites them
        (a fresh tensor each step cost page faults: 1.8 ms of a 10 ms step in a profile of cnn1 at
        minibatch 100)."""
        if not self.convolutional:
            return torch.cat([inputs, inputs.new_ones(*inputs.shape[:-1], 1)], dim=-1)
        runs, n, d = inputs.shape
        k, left = self.kernel, self.left
        windows = F.pad(inputs, (left, k - 1 - left)).unfold(2, k, 1)  # (R, B, d, k)
        shape = (runs, k + 1, n * self.span + k - 1)
        previous = self._buffers.get("features") if kept else None
        padded = self._buffer("features", shape, inputs) if kept else inputs.new_zeros(shape)
        columns = padded[..., left : left + n * self.span].view(runs, k + 1, n, self.span)
        columns[:, :k, :, left : left + d] = windows.permute(0, 3, 1, 2)
        if padded is not previous:  # a new buffer
            columns[:, k, :, left : left + d] = 1
        return padded

    def minibatch_features(
        self, inputs: torch.Tensor, features: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """The :meth:`features` of a minibatch: examples `rows` (R·B indices into the R·n stacked examples,
        run after run) of every run's `inputs` (R, n, d), whose full batch's are `features`. An MLP's are
        those rows of `features`; a CNN's are written into the kept buffer. Whole rows are taken by
        `index_select` (4x faster than `gather` with an expanded index)."""
        runs, n, d = inputs.shape
        if not self.convolutional:
            return features.reshape(runs * n, d + 1).index_select(0, rows).view(runs, -1, d + 1)
        return self.features(inputs.reshape(runs * n, d).index_select(0, rows).view(runs, -1, d), kept=True)

    def loss_and_gradient(
        self, flat: torch.Tensor, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_r (R,), ∇L_r (R, P) in `flat`'s layout) for parameters `flat` (R, P), `features` of
        :meth:`features` and labels (R, B)."""
        blocks = self._blocks(flat)
        loss, gradients = (self._cnn if self.convolutional else self._mlp)(blocks, features, labels)
        return loss, torch.cat([gradient.flatten(1) for gradient in gradients], dim=1)

    @staticmethod
    def _logistic(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_r, g) with g_i = ∂L_r/∂f_i = −y_i σ(−y_i f_i) / B."""
        margins = -labels * outputs  # −y_i f_i
        loss = F.softplus(margins).mean(dim=1)
        return loss, torch.sigmoid(margins).mul_(labels).div_(-labels.shape[1])

    def _mlp(self, blocks: list[torch.Tensor], features: torch.Tensor, labels: torch.Tensor):
        """(L_r, the gradients of `blocks`): [W_lᵀ; b_l] of each hidden layer, a (R, 1, H), c (R, 1)."""
        depth = self.depth
        layers, readout, readout_bias = blocks[:depth], blocks[depth], blocks[depth + 1]
        hidden = [features, torch.bmm(features, layers[0]).relu_()]  # h_0 = [x, 1], h_1
        for layer in layers[1:]:  # h_l = ReLU(h_{l−1} W_lᵀ + b_l)
            hidden.append(torch.baddbmm(layer[:, -1:], hidden[-1], layer[:, :-1]).relu_())
        outputs = torch.baddbmm(readout_bias.unsqueeze(1), hidden[-1], readout.transpose(1, 2))
        loss, g = self._logistic(outputs.squeeze(-1), labels)
        column = g.unsqueeze(-1)  # (R, B, 1)
        gradients = [None] * depth + [
            torch.bmm(g.unsqueeze(1), hidden[-1]),  # ∇a = Σ_i g_i h_D(x_i)
            g.sum(dim=1, keepdim=True),  # ∇c
        ]
        mask = hidden[depth].sign_()  # M_D; h_D is not needed any more
        below = torch.cat([hidden[depth - 1] * column, column], dim=-1) if depth > 1 else features * column
        gradients[depth - 1] = torch.bmm(below.transpose(1, 2), mask).mul_(readout)  # ((g ⊙ [h, 1])ᵀ M) ⊙ a
        if depth > 1:
            scaled = (layers[depth - 1][:, :-1] * readout).transpose(1, 2)  # a ⊙ W_D
            error = torch.bmm(mask, scaled)  # δ'_D W_D
        for layer in range(depth - 1, 0, -1):
            error.mul_(hidden[layer].sign_())  # δ'_l = (δ'_{l+1} W_{l+1}) ⊙ M_l
            below = (
                torch.cat([hidden[layer - 1] * column, column], dim=-1) if layer > 1 else features * column
            )
            gradients[layer - 1] = torch.bmm(below.transpose(1, 2), error)  # (g ⊙ [h_{l−1}, 1])ᵀ δ'_l
            if layer > 1:
                error = torch.bmm(error, layers[layer - 1][:, :-1].transpose(1, 2))  # δ'_l W_l
        return loss, gradients

    def _buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A zero-initialized buffer kept between steps: fresh multi-megabyte tensors each step cost page
        faults and zero fills; what a step leaves in padding columns is zero, so they stay zero."""
        buffer = self._buffers.get(name)
        if (
            buffer is None
            or buffer.shape != shape
            or (buffer.dtype, buffer.device) != (like.dtype, like.device)
        ):
            buffer = self._buffers[name] = like.new_zeros(shape)
        return buffer

    def _cnn(self, blocks: list[torch.Tensor], features: torch.Tensor, labels: torch.Tensor):
        """(L_r, the gradients of `blocks`): [W_1, b_1], then each later convolution's weight and bias,
        then a (R, 1, C·d) and c (R, 1)."""
        k, left, span, d = self.kernel, self.left, self.span, self.dim
        runs, n = labels.shape
        length = n * span  # positions of the padded layout
        first, convolutions, (readout, readout_bias) = blocks[0], blocks[1:-2], blocks[-2:]
        channels = first.shape[1]
        hidden = [self._buffer("h0", (runs, channels, features.shape[-1]), features)]
        torch.bmm(first, features, out=hidden[0]).relu_()  # h_1, with k−1 zero columns around
        for layer in range(1, self.depth):  # h_l = ReLU(b + Σ_t W_t h_{l−1}(· + t − left)), padding zeroed
            source = hidden[-1] if layer == 1 else F.pad(hidden[-1], (left, k - 1 - left))
            weight, bias = convolutions[2 * layer - 2 : 2 * layer]
            taps = weight.permute(3, 0, 1, 2).contiguous()  # W_t, (k, R, C_out, C_in)
            out = self._buffer(f"h{layer}", (runs, taps.shape[2], length), features)
            torch.baddbmm(bias.unsqueeze(-1), taps[0], source[..., :length], out=out)
            for t in range(1, k):
                out.baddbmm_(taps[t], source[..., t : t + length])
            padded = out.relu_().view(runs, -1, n, span)
            padded[..., :left] = 0
            padded[..., left + d :] = 0
            hidden.append(out)
        inner = [hidden[0][..., left : left + length], *hidden[1:]]
        readout = readout.view(runs, channels, d)  # a, (R, C, d) as the module flattens
        readout = F.pad(readout, (left, k - 1 - left))  # zero on padding positions
        top = inner[-1].reshape(runs * channels, n, span)  # one matrix per (run, channel)
        # Σ_p a_cp h_cp(x_i) as the row aᵀhᵀ (aᵀ a transposed column): 3–4.7× faster on the CPU than the
        # column h a, with the same bits in float32 (not in float64; nor with aᵀ a contiguous row)
        column = readout.reshape(runs * channels, span, 1)
        per_channel = torch.bmm(column.transpose(1, 2), top.transpose(1, 2))  # (R·C, 1, n)
        outputs = per_channel.view(runs, channels, n).sum(dim=1) + readout_bias
        loss, g = self._logistic(outputs, labels)
        rows = g.unsqueeze(1).expand(runs, channels, n).reshape(runs * channels, 1, n)
        readout_gradient = torch.bmm(rows, top).view(runs, channels, span)[..., left : left + d]
        gradients = [None] * (1 + len(convolutions)) + [
            readout_gradient.reshape(runs, 1, channels * d),  # ∇a
            g.sum(dim=1, keepdim=True),  # ∇c
        ]
        # δ_D = M_D ⊙ a ⊙ g, with k−1 zero columns around
        spread = self._buffer("error", (runs, channels, length + k - 1), features)
        error = spread[..., k - 1 - left : k - 1 - left + length]
        top_error(inner[-1], readout, g, error)
        for layer in range(self.depth - 1, 0, -1):
            source = hidden[layer - 1] if layer == 1 else F.pad(hidden[layer - 1], (left, k - 1 - left))
            weight_gradient = torch.stack(
                [torch.bmm(error, source[..., t : t + length].transpose(1, 2)) for t in range(k)], dim=-1
            )  # ∂L/∂W_t = Σ_q δ(q) h_{l−1}(q + t − left)ᵀ
            gradients[2 * layer - 1 : 2 * layer + 1] = weight_gradient, error.sum(dim=-1)
            taps = convolutions[2 * layer - 2].permute(3, 0, 2, 1).contiguous()  # W_tᵀ, (k, R, C_in, C_out)
            below = self._buffer(f"below{layer}", (runs, taps.shape[2], length), features)
            torch.bmm(taps[0], spread[..., k - 1 : k - 1 + length], out=below)
            for t in range(1, k):
                below.baddbmm_(taps[t], spread[..., k - 1 - t : k - 1 - t + length])
            error = mask_error(below, inner[layer - 1])  # δ_{l−1} = (Σ_t W_tᵀ δ_l(· − t + left)) ⊙ M_{l−1}
            if layer > 1:
                spread = F.pad(error, (k - 1 - left, left))
        gradients[0] = torch.bmm(error, features[..., left : left + length].transpose(1, 2))  # ∇[W_1, b_1]
        return loss, gradients
