"""R students of one architecture evaluated and differentiated at once, with a hand-written backward pass.

The parameters of R networks of :mod:`momentumlab.models.mlp` are stacked along a leading run dimension
(the modules' parameter names, each of shape (R, *shape)). :meth:`StackedStudents.loss_and_gradients`
returns every run's mean logistic loss L_r = (1/B) Σ_i softplus(−y_i f_r(x_i)) on its own batch and
∇L_r, the gradient autograd gives, from a few batched products (`bmm`) per layer and no autograd graph.

Notation: g_i = ∂L/∂f_i = −y_i σ(−y_i f_i) / B; M = 1[h > 0], the ReLU's derivative, taken in place
from the hidden features h once the forward pass no longer needs them.

- MLP: the first layer reads the inputs with a column of ones appended, [x, 1], so its weight and bias
  are one product and one gradient product. Its gradient δᵀ[x, 1] with δ = g ⊙ δ' is computed as
  δ'ᵀ(g ⊙ [x, 1]), and the last layer's δ' = M ⊙ a (a: the read-out weights) is never formed:
  ∇W_D = a ⊙ (Mᵀ(g ⊙ h_{D−1})) and the error sent down is M(a ⊙ W_D).
- CNN: every feature map is channels-first over a padded layout, each example's d positions with the
  convolution's zero padding around them (d + k − 1 columns), all examples one after another, so a
  convolution is a sum over its k taps of (C × C)·(C × positions) products with shifted column ranges
  and needs no copies of windows (with the positions as the long, contiguous axis these products ran
  15× faster than positions-as-rows on the CPU). The input layer's windows [x_{p−left..p+right}, 1]
  are one (k+1, positions) matrix; padding positions are zero there and are zeroed after every later
  convolution (which writes garbage across examples there); the read-out weights are zero on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _count(parameters: dict[str, torch.Tensor], prefix: str) -> int:
    """Layers named `prefix`0, `prefix`1, …"""
    return sum(1 for name in parameters if name.startswith(prefix) and name.endswith(".weight"))


class StackedStudents:
    """Loss and gradient of R stacked students of one architecture (MLP or 1-D CNN) on (R, B, d) inputs."""

    def __init__(self, parameters: dict[str, torch.Tensor], dim: int):
        self.dim = dim
        self.convolutional = "convolutions.0.weight" in parameters
        self.depth = _count(parameters, "convolutions." if self.convolutional else "hidden.")
        if self.convolutional:
            self.kernel = parameters["convolutions.0.weight"].shape[-1]
            self.left = (self.kernel - 1) // 2  # padding='same' puts the odd extra zero on the right
            self.span = dim + self.kernel - 1  # columns of one example in the padded layout
        self._buffers: dict[str, torch.Tensor] = {}  # kept between calls (CNN feature maps)

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

    def loss_and_gradients(
        self, parameters: dict[str, torch.Tensor], features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L_r (R,), {name: ∇L_r stacked}) for `features` of :meth:`features` and labels (R, B)."""
        if self.convolutional:
            return self._cnn(parameters, features, labels)
        return self._mlp(parameters, features, labels)

    @staticmethod
    def _logistic(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_r, g) with g_i = ∂L_r/∂f_i = −y_i σ(−y_i f_i) / B."""
        margins = -labels * outputs  # −y_i f_i
        loss = F.softplus(margins).mean(dim=1)
        return loss, torch.sigmoid(margins).mul_(labels).div_(-labels.shape[1])

    def _mlp(self, p: dict[str, torch.Tensor], features: torch.Tensor, labels: torch.Tensor):
        depth = self.depth
        first = torch.cat([p["hidden.0.weight"], p["hidden.0.bias"].unsqueeze(-1)], dim=-1)  # [W_1, b_1]
        hidden = [features, torch.bmm(features, first.transpose(1, 2)).relu_()]  # h_0 = [x, 1], h_1
        for layer in range(1, depth):
            weight, bias = p[f"hidden.{layer}.weight"], p[f"hidden.{layer}.bias"]
            hidden.append(torch.baddbmm(bias.unsqueeze(1), hidden[-1], weight.transpose(1, 2)).relu_())
        readout = p["readout.weight"]  # a, (R, 1, H)
        outputs = torch.baddbmm(p["readout.bias"].unsqueeze(1), hidden[-1], readout.transpose(1, 2))
        loss, g = self._logistic(outputs.squeeze(-1), labels)
        column = g.unsqueeze(-1)  # (R, B, 1)
        gradients = {
            "readout.weight": torch.bmm(g.unsqueeze(1), hidden[-1]),  # Σ_i g_i h_D(x_i)
            "readout.bias": g.sum(dim=1, keepdim=True),
        }
        mask = hidden[depth].sign_()  # M_D; h_D is not needed any more
        below = torch.cat([hidden[depth - 1] * column, column], dim=-1) if depth > 1 else features * column
        product = torch.bmm(mask.transpose(1, 2), below)  # Mᵀ(g ⊙ [h_{D−1}, 1])
        product.mul_(readout.transpose(1, 2))  # δ'_D = M ⊙ a: its columns scaled by a
        error = None
        if depth > 1:
            error = torch.bmm(mask, readout.transpose(1, 2) * p[f"hidden.{depth - 1}.weight"])  # δ'_D W_D
        self._split(gradients, f"hidden.{depth - 1}", product)
        for layer in range(depth - 1, 0, -1):
            error.mul_(hidden[layer].sign_())  # δ'_l = (δ'_{l+1} W_{l+1}) ⊙ M_l
            below = (
                torch.cat([hidden[layer - 1] * column, column], dim=-1) if layer > 1 else features * column
            )
            self._split(gradients, f"hidden.{layer - 1}", torch.bmm(error.transpose(1, 2), below))
            if layer > 1:
                error = torch.bmm(error, p[f"hidden.{layer - 1}.weight"])
        return loss, gradients

    @staticmethod
    def _split(gradients: dict[str, torch.Tensor], layer: str, augmented: torch.Tensor) -> None:
        """∇[W, b] (R, out, in+1) as the weight's and the bias's gradients."""
        gradients[f"{layer}.weight"] = augmented[..., :-1]
        gradients[f"{layer}.bias"] = augmented[..., -1]

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

    def _cnn(self, p: dict[str, torch.Tensor], features: torch.Tensor, labels: torch.Tensor):
        k, left, span, d = self.kernel, self.left, self.span, self.dim
        runs, n = labels.shape
        length = n * span  # positions of the padded layout
        first = p["convolutions.0.weight"]  # (R, C, 1, k)
        channels = first.shape[1]
        first = torch.cat([first.flatten(2), p["convolutions.0.bias"].unsqueeze(-1)], dim=-1)  # [W_1, b_1]
        hidden = [self._buffer("h0", (runs, channels, features.shape[-1]), features)]
        torch.bmm(first, features, out=hidden[0]).relu_()  # h_1, with k−1 zero columns around
        for layer in range(1, self.depth):  # h_l = ReLU(b + Σ_t W_t h_{l−1}(· + t − left)), padding zeroed
            source = hidden[-1] if layer == 1 else F.pad(hidden[-1], (left, k - 1 - left))
            weight = p[f"convolutions.{layer}.weight"]
            taps = weight.permute(3, 0, 1, 2).contiguous()  # W_t, (k, R, C_out, C_in)
            out = self._buffer(f"h{layer}", (runs, taps.shape[2], length), features)
            torch.baddbmm(
                p[f"convolutions.{layer}.bias"].unsqueeze(-1), taps[0], source[..., :length], out=out
            )
            for t in range(1, k):
                out.baddbmm_(taps[t], source[..., t : t + length])
            padded = out.relu_().view(runs, -1, n, span)
            padded[..., :left] = 0
            padded[..., left + d :] = 0
            hidden.append(out)
        inner = [hidden[0][..., left : left + length], *hidden[1:]]
        readout = p["readout.weight"].view(runs, channels, d)  # a, (R, C, d) as the module flattens
        readout = F.pad(readout, (left, k - 1 - left))  # zero on padding positions
        top = inner[-1].reshape(runs * channels, n, span)  # one matrix per (run, channel)
        per_channel = torch.bmm(top, readout.reshape(runs * channels, span, 1))  # Σ_p a_cp h_cp(x_i)
        outputs = per_channel.view(runs, channels, n).sum(dim=1) + p["readout.bias"]
        loss, g = self._logistic(outputs, labels)
        rows = g.unsqueeze(1).expand(runs, channels, n).reshape(runs * channels, 1, n)
        readout_gradient = torch.bmm(rows, top).view(runs, channels, span)[..., left : left + d]
        gradients = {
            "readout.weight": readout_gradient.reshape(runs, 1, channels * d),
            "readout.bias": g.sum(dim=1, keepdim=True),
        }
        # δ_D = M_D ⊙ a ⊙ g (M_D taken in place: h_D is not needed any more), with k−1 zero columns around
        spread = self._buffer("error", (runs, channels, length + k - 1), features)
        error = spread[..., k - 1 - left : k - 1 - left + length]
        torch.mul(
            inner[-1].sign_().view(runs, channels, n, span),
            readout.unsqueeze(2),
            out=error.view(runs, channels, n, span),
        )
        error.view(runs, channels, n, span).mul_(g.view(runs, 1, n, 1))
        for layer in range(self.depth - 1, 0, -1):
            source = hidden[layer - 1] if layer == 1 else F.pad(hidden[layer - 1], (left, k - 1 - left))
            weight_gradient = torch.stack(
                [torch.bmm(error, source[..., t : t + length].transpose(1, 2)) for t in range(k)], dim=-1
            )  # ∂L/∂W_t = Σ_q δ(q) h_{l−1}(q + t − left)ᵀ
            gradients[f"convolutions.{layer}.weight"] = weight_gradient
            gradients[f"convolutions.{layer}.bias"] = error.sum(dim=-1)
            weight = p[f"convolutions.{layer}.weight"]
            taps = weight.permute(3, 0, 2, 1).contiguous()  # W_tᵀ, (k, R, C_in, C_out)
            below = self._buffer(f"below{layer}", (runs, taps.shape[2], length), features)
            torch.bmm(taps[0], spread[..., k - 1 : k - 1 + length], out=below)
            for t in range(1, k):
                below.baddbmm_(taps[t], spread[..., k - 1 - t : k - 1 - t + length])
            error = below.mul_(inner[layer - 1].sign_())  # δ_{l−1} = (Σ_t W_tᵀ δ_l(· − t + left)) ⊙ M_{l−1}
            if layer > 1:
                spread = F.pad(error, (k - 1 - left, left))
        first_gradient = torch.bmm(error, features[..., left : left + length].transpose(1, 2))
        gradients["convolutions.0.weight"] = first_gradient[..., :-1].unsqueeze(2)
        gradients["convolutions.0.bias"] = first_gradient[..., -1]
        return loss, gradients
