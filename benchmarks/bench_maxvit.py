"""MaxViT against timm, same weights, same process (GUIDE §6). Run where timm is importable:
    PYTHONPATH=. .ref/bin/python benchmarks/bench_maxvit.py [--model maxvit_tiny_tf_224] [--batch-size 8] [--repeats 7]
"""
import argparse

import torch

from bettervit.bench import run_benchmark

p = argparse.ArgumentParser()
p.add_argument("--model", default="maxvit_tiny_tf_224")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--repeats", type=int, default=7)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
run_benchmark(a.model, batch_size=a.batch_size, repeats=a.repeats)
