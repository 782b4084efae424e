"""Building blocks. Conditioning on a one-hot y is written as a per-class embedding added to a linear
map of the other input: mathematically the same as concatenating one-hot(y), but the y-independent
part is computed once per image and broadcast over classes and samples."""

from __future__ import annotations

import torch
from torch import nn

CONV_OUT_SIDE = 4  # 28 -> 14 -> 7 -> 4 with stride-2 convolutions


class ConvFeatures(nn.Module):
    """Three stride-2 3x3 convolutions with ReLU: (B, 1, 28, 28) -> (B, C3 * 4 * 4)."""

    def __init__(self, channels: tuple[int, int, int]):
        super().__init__()
        c1, c2, c3 = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, 2, 1), nn.ReLU(),
            nn.Flatten(),
        )
        self.out_dim = c3 * CONV_OUT_SIDE**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp(dims: list[int], dropout: float, final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or final_activation:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """p(x | z) or p(x | y, z): 2 dense layers, then 3 transposed convolutions 4 -> 7 -> 14 -> 28.

    Returns Bernoulli logits of shape (B, 784)."""

    def __init__(self, latent_dim: int, hidden: int, channels: tuple[int, int, int], num_classes: int | None,
                 dropout: float):
        super().__init__()
        c0, c1, c2 = channels
        self.z_in = nn.Linear(latent_dim, hidden)
        self.y_in = nn.Embedding(num_classes, hidden) if num_classes else None
        self.c0 = c0
        self.dense = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, c0 * CONV_OUT_SIDE**2), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c0, c1, 3, 2, 1), nn.ReLU(),   # 4 -> 7
            nn.ConvTranspose2d(c1, c2, 4, 2, 1), nn.ReLU(),   # 7 -> 14
            nn.ConvTranspose2d(c2, 1, 4, 2, 1),               # 14 -> 28
            nn.Flatten(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z: (..., D); y: class indices broadcastable to z's leading dims (or None for p(x|z))."""
        h = self.z_in(z)
        if self.y_in is not None:
            h = h + self.y_in(y)
        lead = h.shape[:-1]
        h = self.dense(h.reshape(-1, h.shape[-1])).view(-1, self.c0, CONV_OUT_SIDE, CONV_OUT_SIDE)
        return self.deconv(h).view(*lead, -1)


class GaussianHead(nn.Module):
    """A linear map to (mean, log-variance), the log-variance kept in a numerically safe range."""

    def __init__(self, in_dim: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * latent_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.linear(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)
