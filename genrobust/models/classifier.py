"""One parameterised latent-variable classifier covering all seven structures.

Everything goes through ``log_weights(x, y, K)``: the importance log-weights
log p(x, y, z_k) - log q(z_k | x, y), z_k ~ q(. | x, y), for a set of candidate labels per image.
The ELBO is their mean at K = 1 on the true label; the logits log p(x, y_c) are their logsumexp over
K samples minus log K, evaluated for all classes in one batched pass (the batch is tiled over classes
and samples; features of x that depend on neither y nor z are computed once per image).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from torch import nn

from genrobust.errors import GenrobustError
from genrobust.models.networks import ConvFeatures, Decoder, GaussianHead, mlp
from genrobust.models.structures import STRUCTURES, Structure

LOG_2PI = math.log(2 * math.pi)

# Row-samples (rows x K; a row is one image with all its candidate labels) in one pass of the model. Memory
# grows with rows x K (fmnist-gfz on a CPU: about 0.28 MB per row-sample at inference, 0.55 MB with autograd;
# BENCHMARKS.md), so a pass's rows shrink as K grows: K = 1000 costs the memory of K = 10, in more passes.
# On the CPU the inference bound is the largest pass the study makes at K = 10 (512 rows of predict_draws),
# and the gradient bound holds a whole 100-image attack batch (smaller gradient passes are also faster there:
# they stay in cache), so the study's results are unchanged. A GPU needs large passes to fill up.
PASS_UNITS = {"cpu": 5120, "cuda": 81920}
GRAD_PASS_UNITS = {"cpu": 1280, "cuda": 81920}


def pass_rows(samples: int, device: torch.device | str, grad: bool = False) -> int:
    """Rows per pass at K = ``samples`` on ``device`` (with autograd: ``grad``), at least 1."""
    units = (GRAD_PASS_UNITS if grad else PASS_UNITS)["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return max(1, units // max(1, samples))


class ModelConfig(BaseModel):
    """Architecture hyper-parameters. Stored in the model card; rebuilding from it gives the same model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # an enum in JSON Schema (the page offers a choice); any case is accepted and made canonical below
    structure: Annotated[str, WithJsonSchema({"type": "string", "enum": list(STRUCTURES)})] = Field(
        description="One of DFX, DFZ, DBX, GFZ, GFY, GBZ, GBY (any case).")
    latent_dim: int = Field(64, ge=1, le=1024, description="Dimension of z.")
    num_classes: int = Field(10, ge=2, description="Number of labels.")
    hidden: int = Field(256, ge=1, description="Width of the dense layers.")
    enc_channels: tuple[int, int, int] = Field((32, 64, 64), description="Channels of the 3 convolutions (q, p(y|x,z), p(z|x)).")
    dec_channels: tuple[int, int, int] = Field((32, 32, 16), description="Channels entering the 3 transposed convolutions.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout rate of the dense layers during training.")

    @field_validator("structure", mode="before")
    @classmethod
    def _known_structure(cls, v: str) -> str:
        name = str(v).upper()
        if name not in STRUCTURES:
            raise ValueError(f"unknown structure {v!r}; choose one of {', '.join(STRUCTURES)}")
        return name


def _gaussian_logpdf(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


class LatentClassifier(nn.Module):
    """p(x, y, z) of one of the seven structures, with its amortised q(z | x, y).

    >>> model = LatentClassifier(ModelConfig(structure="GFZ"))
    >>> logits = model.logits(images, samples=10, generator=torch.Generator().manual_seed(0))  # (N, 10)
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.structure: Structure = STRUCTURES[config.structure]
        s, C, D, H, drop = self.structure, config.num_classes, config.latent_dim, config.hidden, config.dropout

        # q(z | x, y): convolutions on x, y joins after them, then dense layers to a Gaussian.
        self.q_conv = ConvFeatures(config.enc_channels)
        self.q_x = nn.Linear(self.q_conv.out_dim, H)
        self.q_y = nn.Embedding(C, H)
        self.q_mlp = nn.Sequential(nn.ReLU(), nn.Dropout(drop), *mlp([H, H], drop, final_activation=True))
        self.q_head = GaussianHead(H, D)

        if s.z_prior == "y":  # p(z | y): an MLP on one-hot(y)
            self.pz_y = nn.Sequential(mlp([C, H, H], 0.0, final_activation=True), GaussianHead(H, D))
        elif s.z_prior == "x":  # p(z | x): convolutions then an MLP
            self.pz_conv = ConvFeatures(config.enc_channels)
            self.pz_x = nn.Sequential(mlp([self.pz_conv.out_dim, H], drop, final_activation=True), GaussianHead(H, D))

        if s.y_term == "y|x,z":  # convolutions on x, then 3 dense layers on [features(x), z]
            self.py_conv = ConvFeatures(config.enc_channels)
            self.py_x = nn.Linear(self.py_conv.out_dim, H)
            self.py_z = nn.Linear(D, H)
            self.py_mlp = nn.Sequential(nn.ReLU(), nn.Dropout(drop), *mlp([H, H, C], drop))
        elif s.y_term == "y|z":  # a 3-layer MLP
            self.py_mlp = mlp([D, H, H, C], drop)
        # p_D(y): label frequencies of the training set (set by the trainer; uniform until then).
        self.register_buffer("log_prior_y", torch.full((C,), -math.log(C)))

        if s.x_term != "data":
            self.decoder = Decoder(D, H, config.dec_channels, C if s.x_term == "x|y,z" else None, drop)
        # channels_last conv weights let oneDNN pick its NHWC kernels: logits at K=10 ~1.5x faster on CPU
        # (BENCHMARKS.md). Weights are saved contiguous, so checkpoints do not depend on the layout.
        self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ core
    def draw_noise(self, n: int, samples: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """The standard-normal draws eps (n, 1, K, D) that ``log_weights`` uses when given none."""
        return torch.randn((n, 1, samples, self.config.latent_dim), generator=generator, device=device,
                           dtype=torch.float32)

    def log_weights(self, x: torch.Tensor, y: torch.Tensor, samples: int = 1,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                    kl_weight: float = 1.0) -> torch.Tensor:
        """Importance log-weights, shape (N, M, K), for images x (N,1,28,28) and labels y (N, M).
        ``noise`` (N, 1, K, D) replaces the draw from ``generator``. ``kl_weight`` scales the latent terms
        log p(z|.) - log q(z|x,y) (training's KL warm-up only; 1 is the true log-weight)."""
        s = self.structure
        N, M, K = x.shape[0], y.shape[1], samples

        # Networks may run under bf16 autocast; every density below is computed in fp32 (a sum over 784
        # pixels in bf16 is off by about a nat, enough to swap classes).
        mu, logvar = (t.float() for t in self.q_head(self.q_mlp(self.q_x(self.q_conv(x))[:, None] + self.q_y(y))))
        # Common random numbers: one eps per (image, sample), shared by every candidate label. Each
        # label's estimate stays unbiased; the noise in their differences, which decides the class, drops.
        eps = noise if noise is not None else self.draw_noise(N, K, generator, x.device)
        z = mu[:, :, None] + torch.exp(0.5 * logvar)[:, :, None] * eps  # (N, M, K, D)
        # log q(z|x,y) from eps directly: exact and avoids the (z - mu)^2 round trip.
        log_w = 0.5 * (eps**2 + LOG_2PI).sum(-1) + 0.5 * logvar.sum(-1)[:, :, None]  # = -log q

        if s.z_prior == "standard":
            log_w = log_w - 0.5 * (z**2 + LOG_2PI).sum(-1)
        elif s.z_prior == "y":
            pmu, plogvar = (t.float() for t in self.pz_y(torch.eye(self.config.num_classes, device=x.device)))
            log_w = log_w + _gaussian_logpdf(z, pmu[y][:, :, None], plogvar[y][:, :, None])
        else:
            pmu, plogvar = (t.float() for t in self.pz_x(self.pz_conv(x)))  # (N, D)
            log_w = log_w + _gaussian_logpdf(z, pmu[:, None, None], plogvar[:, None, None])

        if kl_weight != 1.0:
            log_w = kl_weight * log_w
        yk = y[:, :, None].expand(N, M, K)
        if s.y_term == "data":
            log_w = log_w + self.log_prior_y[yk]
        else:
            if s.y_term == "y|x,z":
                h = self.py_x(self.py_conv(x))[:, None, None] + self.py_z(z)
            else:
                h = z
            log_py = F.log_softmax(self.py_mlp(h).float(), dim=-1)
            log_w = log_w + log_py.gather(-1, yk[..., None]).squeeze(-1)

        if s.x_term != "data":
            logits = self.decoder(z, yk if s.x_term == "x|y,z" else None).float()  # (N, M, K, 784)
            # Bernoulli log-likelihood sum(x*l - softplus(l)) with x shared across labels and samples.
            with torch.autocast(x.device.type, enabled=False):
                log_px = torch.einsum("nmkp,np->nmk", logits, x.reshape(N, -1).float()) - F.softplus(logits).sum(-1)
            log_w = log_w + log_px
        return log_w.float()

    def elbo(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
             kl_weight: float = 1.0) -> torch.Tensor:
        """Single-sample ELBO of log p(x, y) per image, shape (N,). (For DFX/DBX: of log p(y|x) + const.)
        ``kl_weight`` < 1 down-weights the KL term (warm-up against posterior collapse)."""
        return self.log_weights(x, y[:, None], 1, generator, kl_weight=kl_weight)[:, 0, 0]

    def logits(self, x: torch.Tensor, samples: int = 10, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Importance-sampled log p(x, y_c) for every class, shape (N, C); softmax gives p(y|x).
        ``noise`` (N, 1, K, D) replaces the draw from ``generator``."""
        if samples < 1:
            raise GenrobustError(f"samples (K) must be at least 1, got {samples}")
        rows = pass_rows(samples, x.device)
        if torch.is_grad_enabled() or x.shape[0] <= rows:  # with autograd the caller chunks (its graph spans them)
            return self._logits(x, samples, generator, noise)
        # Each pass draws its own rows of noise from the generator in turn: on the CPU the same numbers as one
        # draw for the whole batch whenever a row's K x D values are a multiple of 16 (D = 64 here), as torch
        # fills normals in blocks of 16 (tested).
        return torch.cat([self._logits(x[i:i + rows], samples, generator, None if noise is None else noise[i:i + rows])
                          for i in range(0, x.shape[0], rows)])

    def _logits(self, x: torch.Tensor, samples: int, generator: torch.Generator | None,
                noise: torch.Tensor | None) -> torch.Tensor:
        y = torch.arange(self.config.num_classes, device=x.device).expand(x.shape[0], -1)
        return torch.logsumexp(self.log_weights(x, y, samples, generator, noise), dim=-1) - math.log(samples)

    def logits_and_jacobian(self, x: torch.Tensor, samples: int = 10, generator: torch.Generator | None = None,
                            noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, C) and their input gradients for every class (N, C, 784) from one backward pass.

        Logit c depends on x through the shared x-features and its own (c, k) slice of the tiled pass, so
        each image is replicated once per class, replica c computes only class c's logit, and a single
        backward of their sum yields all C gradients. Decoder work equals one ``logits`` call; only the
        cheap x-convolutions run C times. The noise is shared by the replicas of an image, so the logits
        equal ``logits(x, samples, generator)`` exactly. ``noise`` (N, 1, K, D) replaces the draw."""
        N, C = x.shape[0], self.config.num_classes
        noise = (self.draw_noise(N, samples, generator, x.device) if noise is None else noise).repeat_interleave(C, 0)
        xr = x.detach().repeat_interleave(C, 0).requires_grad_(True)
        y = torch.arange(C, device=x.device).repeat(N)[:, None]
        logits = (torch.logsumexp(self.log_weights(xr, y, samples, noise=noise), -1) - math.log(samples)).view(N, C)
        (grad,) = torch.autograd.grad(logits.sum(), xr)
        return logits.detach(), grad.view(N, C, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits with the default K = 10, so the model is a plain images -> logits module."""
        return self.logits(x)

    def predict(self, x: torch.Tensor, samples: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.logits(x, samples, generator).argmax(-1)

    @property
    def logits_have_density(self) -> bool:
        return self.structure.logits_have_density
