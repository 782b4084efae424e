"""Core performance figures for BENCHMARKS.md: machine peak, training steps, logits throughput, memory.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--json OUT]

Every figure is measured in this run (the machine is noisy, so compare rows of one run, not across
runs). Peak memory comes from a fresh subprocess per measurement (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from genrobust.models import STRUCTURES, LatentClassifier, ModelConfig

BATCH = 100


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_of(lambda: a @ b, repeats) / 1e9


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_step(structure: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = LatentClassifier(ModelConfig(structure=structure)).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))

    def step():
        loss = -model.elbo(x, y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    seconds = best_of(step, repeats)
    f = flops(lambda: (-model.elbo(x, y).mean()).backward())
    return {"structure": structure, "step_ms": seconds * 1e3, "images_per_s": BATCH / seconds,
            "gflops": f / seconds / 1e9}


def logits_throughput(structure: str, samples: int, batch: int, bf16: bool, channels_last: bool,
                      compile_: bool, n: int) -> dict:
    torch.manual_seed(0)
    model = LatentClassifier(ModelConfig(structure=structure)).eval()
    if not channels_last:  # the model's default layout is channels_last
        model = model.to(memory_format=torch.contiguous_format)
    fn = torch.compile(model.logits, dynamic=False) if compile_ else model.logits
    x = torch.rand(n, 1, 28, 28)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    gen = torch.Generator().manual_seed(0)

    def run():
        with torch.inference_mode(), amp:
            for i in range(0, n, batch):
                fn(x[i:i + batch], samples, gen)

    seconds = best_of(run, 2)
    with torch.inference_mode(), amp:
        f = flops(lambda: model.logits(x[:batch], samples, gen)) * (n / batch)
    return {"structure": structure, "samples": samples, "batch": batch, "bf16": bf16, "channels_last": channels_last,
            "compile": compile_, "images_per_s": n / seconds, "gflops": f / seconds / 1e9}


def in_subprocess(kind: str, **kw) -> dict:
    """Run one measurement in a fresh interpreter so ru_maxrss is that measurement's peak memory."""
    code = (f"import json,resource,sys; sys.path.insert(0,{repr(sys.path[0])}); import bench_core as b; "
            f"r=b.{kind}(**{kw!r}); r['peak_rss_mb']=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024; "
            "print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and images")
    ap.add_argument("--json", help="also write all rows to this file")
    ap.add_argument("--compile", action="store_true", help="include torch.compile rows (slow to compile)")
    args = ap.parse_args()
    reps, n = (3, 200) if args.quick else (10, 1000)
    rows: dict[str, list | dict] = {}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows["peak_gflops"] = peak
    print(f"matmul peak: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s "
          f"(bf16/fp32 {peak['bf16'] / peak['fp32']:.2f}x)\n")

    print(f"train step, batch {BATCH} (ELBO forward + backward + Adam), default widths")
    print(f"{'structure':<10}{'ms/step':>9}{'images/s':>10}{'GFLOP/s':>9}{'% fp32 peak':>12}{'peak MB':>9}")
    rows["train"] = []
    for s in STRUCTURES:
        r = in_subprocess("train_step", structure=s, repeats=reps)
        rows["train"].append(r)
        print(f"{s:<10}{r['step_ms']:>9.1f}{r['images_per_s']:>10.0f}{r['gflops']:>9.1f}"
              f"{100 * r['gflops'] / peak['fp32']:>11.0f}%{r['peak_rss_mb']:>9.0f}")

    print(f"\nlogits throughput, K=10, all 10 classes, {n} images")
    print(f"{'structure':<10}{'variant':<33}{'images/s':>10}{'GFLOP/s':>9}{'% peak':>8}{'peak MB':>9}")
    variants = [("fp32, NCHW, batch 100", dict(batch=100, bf16=False, channels_last=False, compile_=False)),
                ("fp32, default (chan-last), b100", dict(batch=100, bf16=False, channels_last=True, compile_=False)),
                ("fp32, chan-last, batch 25", dict(batch=25, bf16=False, channels_last=True, compile_=False)),
                ("bf16, chan-last, batch 100", dict(batch=100, bf16=True, channels_last=True, compile_=False)),
                ("bf16, chan-last, batch 25", dict(batch=25, bf16=True, channels_last=True, compile_=False)),
                ("bf16, NCHW, batch 25", dict(batch=25, bf16=True, channels_last=False, compile_=False))]
    if args.compile:
        variants.append(("fp32, chan-last, torch.compile", dict(batch=100, bf16=False, channels_last=True, compile_=True)))
    rows["logits"] = []
    for s in ("DFZ", "GFZ"):
        for label, v in variants:
            r = in_subprocess("logits_throughput", structure=s, samples=10, n=n, **v)
            rows["logits"].append(r)
            p = peak["bf16" if v["bf16"] else "fp32"]
            print(f"{s:<10}{label:<33}{r['images_per_s']:>10.0f}{r['gflops']:>9.1f}{100 * r['gflops'] / p:>7.0f}%"
                  f"{r['peak_rss_mb']:>9.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
