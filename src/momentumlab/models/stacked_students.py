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
- CNN: every feature map is channels-last over a padded layout, each example's d positions with the
  convolution's zero padding around them (d + k − 1 rows), all examples one after another, so a
  convolution is a sum over its k taps of products of shifted row ranges with k (C × C) matrices and
  needs no copies of windows. The input layer's windows [x_{p−left..p+right}, 1] are one (rows, k+1)
  matrix; rows of padding are zero there and are zeroed after every later convolution (which writes
  garbage across examples there); the read-out weights are zero on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _count(parameters: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(1 for name in parameters if name.startswith(prefix) and name.endswith(".weight"))


class StackedStudents:
    """Loss and gradient of R stacked students of one architecture (MLP or 1-D CNN) on (R, B, d) inputs."""

    def __init__(self, parameters: dict[str, torch.Tensor], dim: int):
        self.dim = dim
        self.depth = _count(parameters, "convolutions.")
        self.convolutional = self.depth > 0
        if not self.convolutional:
            self.depth = _count(parameters, "hidden.")
        if self.convolutional:
            self.kernel = parameters["convolutions.0.weight"].shape[-1]
            self.left = (
                self.kernel - 1
            ) // 2  # PyTorch's padding='same' puts the odd extra zero on the right
            self.span = dim + self.kernel - 1  # rows of one example in the padded layout

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """What the first product reads: [x, 1] (R, B, d+1) for an MLP; for a CNN, the windows
        [x_{p−left..p+right}, 1] of each position in the padded layout, zero on padding rows, with k−1
        zero rows around the whole (R, left + B·(d+k−1) + right, k+1)."""
        ones = inputs.new_ones(*inputs.shape[:-1], 1)
        if not self.convolutional:
            return torch.cat([inputs, ones], dim=-1)
        runs, n, d = inputs.shape
        k, left = self.kernel, self.left
        windows = F.pad(inputs, (left, k - 1 - left)).unfold(2, k, 1)  # (R, B, d, k)
        rows = inputs.new_zeros(runs, n, self.span, k + 1)
        rows[:, :, left : left + d] = torch.cat([windows, ones.unsqueeze(-1).expand(-1, -1, d, 1)], dim=-1)
        return F.pad(rows.view(runs, n * self.span, k + 1), (0, 0, left, k - 1 - left))

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

    def _convolve(self, source: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """ReLU(Σ_t source[q + t] W_tᵀ + b) on the rows of the padded layout, padding rows zeroed, with
        k−1 zero rows around it; `source` has those rows around it too."""
        runs, rows, _ = source.shape
        length, k, left = rows - self.kernel + 1, self.kernel, self.left
        out = source.new_zeros(runs, rows, weight.shape[1])
        inner = out[:, left : left + length]
        taps = weight.permute(3, 0, 2, 1)  # W_tᵀ, (k, R, C_in, C_out)
        torch.baddbmm(bias.unsqueeze(1), source[:, :length], taps[0], out=inner)
        for t in range(1, k):
            inner.baddbmm_(source[:, t : t + length], taps[t])
        inner.relu_()
        padded = inner.view(runs, -1, self.span, inner.shape[-1])
        padded[:, :, :left] = 0
        padded[:, :, left + self.dim :] = 0
        return out

    def _cnn(self, p: dict[str, torch.Tensor], features: torch.Tensor, labels: torch.Tensor):
        k, left, span, d = self.kernel, self.left, self.span, self.dim
        runs, n = labels.shape
        length = n * span  # rows of the padded layout
        first = p["convolutions.0.weight"]  # (R, C, 1, k)
        channels = first.shape[1]
        first = torch.cat([first.flatten(2), p["convolutions.0.bias"].unsqueeze(-1)], dim=-1)  # [W_1, b_1]
        hidden = [torch.bmm(features, first.transpose(1, 2)).relu_()]  # k−1 zero rows around it
        for layer in range(1, self.depth):
            weight, bias = p[f"convolutions.{layer}.weight"], p[f"convolutions.{layer}.bias"]
            hidden.append(self._convolve(hidden[-1], weight, bias))
        inner = [h[:, left : left + length] for h in hidden]
        readout = p["readout.weight"].view(runs, channels, d).transpose(1, 2)  # (R, d, C), channels-last
        padded_readout = F.pad(readout, (0, 0, left, k - 1 - left))  # zero on padding rows, (R, span, C)
        top = inner[-1].reshape(runs, n, span * channels)
        outputs = torch.baddbmm(
            p["readout.bias"].unsqueeze(1), top, padded_readout.reshape(runs, -1, 1)
        ).squeeze(-1)
        loss, g = self._logistic(outputs, labels)
        readout_gradient = torch.bmm(g.unsqueeze(1), top).view(runs, span, channels)[:, left : left + d]
        gradients = {
            "readout.weight": readout_gradient.transpose(1, 2).reshape(runs, 1, channels * d),
            "readout.bias": g.sum(dim=1, keepdim=True),
        }
        # δ_D = M_D ⊙ a ⊙ g, on rows with k−1 zero rows around them (where the error is sent from)
        error = inner[-1].sign_().view(runs, n, span, channels)
        error.mul_(padded_readout.unsqueeze(1)).mul_(g.view(runs, n, 1, 1))
        for layer in range(self.depth - 1, 0, -1):
            source = hidden[layer - 1]  # h_{l−1} with zero rows around
            delta = error.view(runs, length, -1)
            taps = p[f"convolutions.{layer}.weight"].permute(3, 0, 1, 2)  # W_t, (k, R, C_out, C_in)
            weight_gradient = torch.stack(
                [torch.bmm(delta.transpose(1, 2), source[:, t : t + length]) for t in range(k)], dim=-1
            )
            gradients[f"convolutions.{layer}.weight"] = weight_gradient
            gradients[f"convolutions.{layer}.bias"] = delta.sum(dim=1)
            spread = F.pad(delta, (0, 0, k - 1 - left, left))  # δ with k−1 zero rows around it
            below = torch.bmm(spread[:, k - 1 : k - 1 + length], taps[0])
            for t in range(1, k):
                below.baddbmm_(spread[:, k - 1 - t : k - 1 - t + length], taps[t])
            error = below.mul_(inner[layer - 1].sign_())  # δ_{l−1} = (Σ_t shifted δ_l W_t) ⊙ M_{l−1}
        first_gradient = torch.bmm(
            error.view(runs, length, -1).transpose(1, 2), features[:, left : left + length]
        )
        gradients["convolutions.0.weight"] = first_gradient[..., :-1].unsqueeze(2)
        gradients["convolutions.0.bias"] = first_gradient[..., -1]
        return loss, gradients
