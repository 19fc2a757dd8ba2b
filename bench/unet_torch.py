#!/usr/bin/python3
"""unet_torch.py — the PyTorch side of bench/bench_unet.c: the same U-Net (the network of
tests/peer_torch_unet.py, which the cross-check holds equal to resbridge's to 1e-15),
float64, tanh, V(1,1), a training step's work: forward with autograd recording, MSE loss,
backward (every parameter and the input gradient). Best of --reps steps after a warm-up,
and of more while they took less than --min-time seconds. torch.set_num_threads(T),
OPENBLAS_NUM_THREADS=1 (unless set). Prints one JSON object with bench_unet's fields.

    /usr/bin/python3 bench/unet_torch.py --threads 1 --n 63 --levels 5 --channels 16 --batch 8 --cycles 2
"""
import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from peer_torch_unet import UNet  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    for name, d in (("threads", 1), ("n", 63), ("levels", 5), ("in", 2), ("channels", 16), ("out", 1), ("batch", 8),
                    ("cycles", 2), ("reps", 5)):
        p.add_argument("--" + name, type=int, default=d)
    p.add_argument("--min-time", type=float, default=1.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    c, k = a.channels, 9
    cin = getattr(a, "in")
    count = c * cin * k + c + a.levels * 2 * c * c * k + (a.levels - 1) * 2 * c * c * k + a.out * c * k + a.out
    g = torch.Generator().manual_seed(1)
    flat = (torch.rand(count, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(c * k)
    net = UNet(flat, 2, a.levels, cin, c, a.out, 1, 1, a.cycles, "tanh", "V")
    x = (torch.rand(a.batch, cin, a.n, a.n, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    target = torch.rand(a.batch, a.out, a.n, a.n, generator=g, dtype=torch.float64) * 2 - 1
    best = [float("inf")] * 2
    start, r = time.perf_counter(), 0
    while r <= a.reps or time.perf_counter() - start < a.min_time:  # r = 0: warm-up
        for t in net.params:
            t.grad = None
        x.grad = None
        t0 = time.perf_counter()
        loss = F.mse_loss(net.forward(x), target)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if r > 0:
            best = [min(best[0], t1 - t0), min(best[1], t2 - t1)]
        r += 1
    print(json.dumps({"impl": "torch", "threads": a.threads,
                      "config": f"{a.n},{a.levels},{cin},{c},{a.out},{a.batch},{a.cycles}", "params": count,
                      "fwd_s": best[0], "bwd_s": best[1], "total_s": sum(best), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
