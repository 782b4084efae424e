"""Seeded, batched evaluation of a classifier's importance-sampled logits."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from tqdm import tqdm

from genrobust.data import check_images
from genrobust.device import module_device
from genrobust.errors import GenrobustError
from genrobust.models import LatentClassifier

EVAL_BATCH = 100


def batched_logits(model: LatentClassifier, images: torch.Tensor, samples: int = 10, seed: int = 0,
                   batch_size: int = EVAL_BATCH, bf16: bool = False, progress: bool = False,
                   desc: str = "logits") -> torch.Tensor:
    """Logits (N, C) for many images, with the model's noise drawn from one generator seeded by ``seed``
    so the same call gives the same logits. Images are validated first (shape, dtype, finite, in [0, 1])
    and moved to the model's device, where the logits stay; ``model.logits`` itself skips the checks so
    that attack loops pay nothing for them."""
    images = check_images(images).to(module_device(model))
    if samples < 1:
        raise GenrobustError(f"samples (K) must be at least 1, got {samples}")
    if batch_size < 1:
        raise GenrobustError(f"batch size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=images.device).manual_seed(seed)
    out = []
    amp = torch.autocast(images.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        with torch.inference_mode(), amp:
            for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress,
                          leave=False):
                out.append(model.logits(images[i:i + batch_size], samples, gen).float())
    finally:
        model.train(was_training)
    return torch.cat(out)


def accuracy(model: LatentClassifier, images: torch.Tensor, labels: torch.Tensor, samples: int = 10, seed: int = 0,
             progress: bool = False, bf16: bool = False, desc: str = "evaluate") -> dict:
    """Accuracy with n, K and wall seconds."""
    t0 = time.perf_counter()
    pred = batched_logits(model, images, samples, seed, progress=progress, bf16=bf16, desc=desc).argmax(-1)
    return {
        "accuracy": (pred == torch.as_tensor(labels, device=pred.device)).float().mean().item(),
        "n": len(labels),
        "samples": samples,
        "seconds": time.perf_counter() - t0,
        "device": pred.device,
    }


def logits_for_requests(model: LatentClassifier, requests: list[tuple[torch.Tensor, int]], samples: int = 10,
                        batch_size: int = EVAL_BATCH) -> list[torch.Tensor]:
    """Logits of several independently seeded image batches ``[(images, seed), ...]`` in shared forward
    passes (the service's dynamic batching). Each request's noise comes from its own generator, drawn as
    ``batched_logits`` draws it, so its logits equal ``batched_logits(model, images, samples, seed)`` (up to
    float rounding) whatever it was batched with. Images must already be checked (``check_images``)."""
    if samples < 1:
        raise GenrobustError(f"samples (K) must be at least 1, got {samples}")
    device = module_device(model)
    noise, sizes = [], []
    for x, seed in requests:
        gen = torch.Generator(device=device).manual_seed(seed)
        noise += [model.draw_noise(len(x[i:i + EVAL_BATCH]), samples, gen, device)
                  for i in range(0, len(x), EVAL_BATCH)]
        sizes.append(len(x))
    x, eps = torch.cat([x for x, _ in requests]).to(device), torch.cat(noise)
    model.eval()
    with torch.inference_mode():
        out = torch.cat([model.logits(x[i:i + batch_size], samples, noise=eps[i:i + batch_size])
                         for i in range(0, len(x), batch_size)])
    return list(out.float().cpu().split(sizes))
