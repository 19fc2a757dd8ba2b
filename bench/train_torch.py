#!/usr/bin/python3
"""train_torch.py — the PyTorch side of bench/bench_train.c: one training step of the
nets issue's reference network (3x3 conv 1->16 + BN + ReLU, three basic blocks at 16,
a stride-2 block to 32 with a 1x1 projection, global average pooling, linear 10;
29,050 parameters) at batch B of 28x28 images, SGD momentum 0.9, weight decay 5e-4.

Timed as bench_train times resbridge, each the best of --reps runs after one warm-up:
  fwd    the forward pass in training mode (autograd records the graph, BN tracks)
  bwd    loss.backward() after the cross-entropy loss
  step   a whole step: zero_grad, forward, loss, backward, optimizer.step()
Prints one JSON object per (dtype, threads), the fields of bench_train:
  {"impl":"torch","dtype":"float64","batch":128,"threads":T,"params":29050,"fwd_s":..,
   "bwd_s":..,"step_s":..,"epoch_s":..,"torch":"1.13..."}

Like bench/conv_torch.py it sets OPENBLAS_NUM_THREADS=1 (unless the caller did) and
torch.set_num_threads(T): PyTorch's float64 convolutions are its own im2col + BLAS.

    /usr/bin/python3 bench/train_torch.py --threads 1 --threads 2 --dtype float64 --dtype float32
"""
import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402  (after the environment is set)
from torch import nn  # noqa: E402


class Basic(nn.Module):
    """ReLU(F(x) + shortcut(x)), F = conv3-BN-ReLU-conv3-BN; 1x1 conv + BN shortcut on a change."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return torch.relu(self.f(x) + self.skip(x))


def reference_net():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Basic(16, 16, 1), Basic(16, 16, 1), Basic(16, 16, 1), Basic(16, 32, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def bench(dtype, threads, reps, batch):
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    net = reference_net().to(dtype).train()
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 1, 28, 28, dtype=dtype)
    y = torch.arange(batch) % 10
    loss_fn = nn.CrossEntropyLoss()
    t_fwd, t_bwd, t_step = [], [], []
    for r in range(reps + 1):  # r = 0: warm-up
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = net(x)
        t1 = time.perf_counter()
        loss = loss_fn(out, y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        loss_fn(net(x), y).backward()
        opt.step()
        t5 = time.perf_counter()
        if r > 0:
            t_fwd.append(t1 - t0)
            t_bwd.append(t3 - t2)
            t_step.append(t5 - t4)
    step = min(t_step)
    return {"impl": "torch", "dtype": str(dtype).replace("torch.", ""), "batch": batch, "threads": threads,
            "params": params, "fwd_s": round(min(t_fwd), 5), "bwd_s": round(min(t_bwd), 5),
            "step_s": round(step, 5), "epoch_s": round(step * ((60000 + batch - 1) // batch), 2),
            "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, action="append")
    ap.add_argument("--dtype", choices=["float64", "float32"], action="append")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    for dt in a.dtype or ["float64", "float32"]:
        for t in a.threads or [1, 2]:
            print(json.dumps(bench(getattr(torch, dt), t, a.reps, a.batch)), flush=True)


if __name__ == "__main__":
    main()
