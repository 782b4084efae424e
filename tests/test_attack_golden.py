"""Attacks whose algorithm did not change give the same adversarials: every case of tests/attack_cases.py
against the golden file written by scripts/attack_golden.py (before the attack-kinds refactor).

Exact on the machine that wrote it; a small tolerance elsewhere, since another CPU may round a reduction
differently (a changed algorithm moves pixels by a step size, far above it)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.attack_cases import CASES, run_case

GOLDEN = load_file(Path(__file__).parent / "data" / "attack_golden.safetensors")


@pytest.mark.parametrize("key", list(CASES))
def test_attack_matches_golden(key):
    out = run_case(key)
    for name, t in out.items():
        gold = GOLDEN[f"{key}/{name}"]
        assert t.shape == gold.shape
        if t.is_floating_point():
            # at most a rare pixel may differ (a sign flip of a near-zero gradient on another CPU)
            close = torch.isclose(t, gold, atol=1e-5, rtol=0)
            assert close.float().mean() >= 0.999, f"{key}: {(~close).sum().item()} pixels differ"
        else:
            assert torch.equal(t, gold)
