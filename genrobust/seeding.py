"""Every random stream of genrobust, derived in one place from a user's seed.

A seed the user gives (any integer >= 0, however large) and a stream name go through
``numpy.random.SeedSequence``, which hashes them into independent, well-mixed seeds: the evaluator's noise
can never equal the attacker's, and no arithmetic on the user's seed can overflow torch's seed range. Keys
after the name (an epoch, a batch index, a chunk start) give further independent sub-streams.
"""

from __future__ import annotations

import numpy as np
import torch

from genrobust.errors import GenrobustError

SEED_MAX = 2**63 - 1  # the largest seed any entry point accepts (torch seeds a generator with it directly)

# Stable ids: a stream's numbers must never change when a stream is added (append only).
STREAMS = {
    "weights": 0,      # initial weights of a training run
    "training": 1,     # batch order, dropout and latent noise of one epoch: key (epoch,)
    "attacker": 2,     # an attack's own noise: key (batch index,)
    "evaluator": 3,    # fresh evaluations that judge an attack
    "detector": 4,     # detection logits: keys (purpose,)
    "labels": 5,       # labels predicted for unlabelled images before an attack
    "chunk": 6,        # a sweep chunk's own seed: key (start image,)
    "fit": 7,          # fitting and calibrating detectors: key (split,)
    "acceptance": 8,   # an attack's frozen robust-acceptance draws (one set per image for the whole attack)
    "part": 9,         # a part of an attack batch too large to hold its acceptance draws at once: key (part,)
    "clean": 10,       # the clean images' majority of R fresh evaluations (the study's primary endpoint)
}


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise GenrobustError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    return int(seed)


def derive(seed: int, stream: str, *keys: int) -> int:
    """A seed in [0, 2**63) for the named stream of ``seed`` (and sub-stream ``keys``)."""
    if stream not in STREAMS:
        raise GenrobustError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    ss = np.random.SeedSequence(check_seed(seed), spawn_key=(STREAMS[stream], *(int(k) for k in keys)))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, stream: str, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` for the named stream."""
    return torch.Generator(device=device).manual_seed(derive(seed, stream, *keys))
