"""One tree's CPU speed for a side-by-side with another checkout: a training epoch and batched logits.

    git worktree add /tmp/old <commit>
    for i in 1 2 3; do for t in /tmp/old $PWD; do .venv/bin/python benchmarks/bench_trees.py $t; done; done

Run the trees alternately in one session (the machine is noisy) and compare pairs, not runs.
"""

import os
import sys
import tempfile
import time

tree = os.path.abspath(sys.argv[1])
sys.path.insert(0, tree)
os.environ["GENROBUST_MODEL_DIR"] = tempfile.mkdtemp()

import genrobust  # noqa: E402
from genrobust import data  # noqa: E402
from genrobust.evaluation import batched_logits  # noqa: E402
from genrobust.models import ModelConfig  # noqa: E402
from genrobust.store import ModelStore  # noqa: E402
from genrobust.training import Trainer, TrainConfig  # noqa: E402

assert genrobust.__file__.startswith(tree), f"imported {genrobust.__file__}, not the tree {tree}"
trainer = Trainer(ModelConfig(structure="GFZ"), TrainConfig(epochs=1, limit=3000), "bench", progress=False)
train = data.load("fashion-mnist", "train", 3000)
trainer._epoch(train, 1)  # warm-up
t = time.perf_counter()
trainer._epoch(train, 2)
epoch = time.perf_counter() - t
model, _ = ModelStore().load("fmnist-gfz")
x = data.load("fashion-mnist", "test", 500).images
batched_logits(model, x[:100], 10, 0)
t = time.perf_counter()
batched_logits(model, x, 10, 0)
print(f"{tree}: GFZ training epoch of 3,000 images {epoch:.2f} s; batched_logits GFZ K=10 "
      f"{500 / (time.perf_counter() - t):.0f} images/s")
