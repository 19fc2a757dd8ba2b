#!/usr/bin/python3
"""conv_torch.py — the PyTorch side of bench/bench_conv.c: 3x3 stride-1 conv2d
(padding 1, no bias), float64, forward and both backward products.

Timed, each the best of --reps runs after one warm-up (and of more while the runs have
taken less than --min-time seconds, default 1, as bench_conv does):
  fwd         y = conv2d(x, w) with x and w requiring grad (the forward of a
              training step: autograd records the graph)
  bwd_data    torch.autograd.grad(y, x, dy, retain_graph=True)   input gradient only
  bwd_weight  torch.autograd.grad(y, w, dy, retain_graph=True)   weight gradient only
The two backward products are timed separately (autograd then computes only the
requested gradient), as bench_conv times rb_op_vjp and rb_op_param_grad.
"bwd_both_s" is one autograd.grad call for both, for reference (not in total_s).

Prints one JSON object per shape, the same fields as bench_conv:
  {"impl":"torch","shape":[N,Cin,H,W,Cout],"threads":T,"fwd_s":..,"bwd_data_s":..,
   "bwd_weight_s":..,"total_s":..,"gflops":..,"bwd_both_s":..,"torch":"1.13..."}

PyTorch's float64 convolutions go through its own im2col + BLAS (no MKL-DNN for
double); they are fastest with OPENBLAS_NUM_THREADS=1 and torch.set_num_threads(T),
which this script sets (OPENBLAS_NUM_THREADS only if the caller has not).

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/conv_torch.py --threads 2 --shape 16,64,64,64,64
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402  (after the environment is set)

DEFAULT_SHAPES = ["16,64,64,64,64", "64,16,32,32,16", "128,32,28,28,32", "128,1,28,28,16"]


def parse_shape(s):
    v = [int(t) for t in s.split(",")]
    if len(v) != 5 or min(v) < 1:
        raise argparse.ArgumentTypeError(f"--shape wants N,Cin,H,W,Cout (all >= 1), got '{s}'")
    return v


def bench_shape(shape, threads, reps, min_time):
    n, cin, h, w, cout = shape
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, cin, h, w, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    wt = (torch.rand(cout, cin, 3, 3, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    dy = torch.rand(n, cout, h, w, generator=g, dtype=torch.float64) * 2 - 1
    conv = torch.nn.functional.conv2d
    best = [float("inf")] * 4
    start, r = time.perf_counter(), 0
    while r <= reps or time.perf_counter() - start < min_time:  # r = 0: warm-up
        t0 = time.perf_counter()
        y = conv(x, wt, None, 1, 1)
        t1 = time.perf_counter()
        (gx,) = torch.autograd.grad(y, x, dy, retain_graph=True)
        t2 = time.perf_counter()
        (gw,) = torch.autograd.grad(y, wt, dy, retain_graph=True)
        t3 = time.perf_counter()
        gx2, gw2 = torch.autograd.grad(y, (x, wt), dy)
        t4 = time.perf_counter()
        if r > 0:
            best = [min(b, t) for b, t in zip(best, (t1 - t0, t2 - t1, t3 - t2, t4 - t3))]
        del y, gx, gw, gx2, gw2
        r += 1
    flops = 2.0 * n * cout * cin * 9 * h * w
    total = best[0] + best[1] + best[2]
    return {
        "impl": "torch",
        "shape": shape,
        "threads": threads,
        "fwd_s": best[0],
        "bwd_data_s": best[1],
        "bwd_weight_s": best[2],
        "total_s": total,
        "gflops": round(3 * flops / total * 1e-9, 2),
        "gflops_fwd": round(flops / best[0] * 1e-9, 2),
        "gflops_bwd_data": round(flops / best[1] * 1e-9, 2),
        "gflops_bwd_weight": round(flops / best[2] * 1e-9, 2),
        "bwd_both_s": best[3],
        "torch": torch.__version__,
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", type=parse_shape, action="append")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.0)
    a = ap.parse_args()
    if a.threads < 1 or a.reps < 1 or not a.min_time >= 0:
        ap.error("--threads and --reps must be >= 1, --min-time >= 0")
    torch.set_num_threads(a.threads)
    for shape in a.shape or [parse_shape(s) for s in DEFAULT_SHAPES]:
        print(json.dumps(bench_shape(shape, a.threads, a.reps, a.min_time)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
