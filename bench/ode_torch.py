#!/usr/bin/python3
"""ode_torch.py — the PyTorch side of bench/bench_ode.c: the neural ODE stack
x <- x + h tanh(x W^T + b) (Euler, a ResNet of L layers; or classical RK4) over t in [0, 1],
h = 1/L, float64, with the weights, inputs and output gradient bench_ode wrote with --dump DIR.

Check (always, before timing): the forward xT and the gradients dL/dx0, dL/dW, dL/db for
dL/dxT = dy, against resbridge's (DIR/<method>_xT_N<batch>.npy, ...); prints the largest
relative difference (max |a - b| / max |b|) of each as JSON ("kind":"check"). They agree to
rounding (~1e-13) or the script exits with status 3 (tolerance --tol, default 1e-10).

Timed, each the best of --reps runs after one warm-up (and of more while the runs have taken
less than --min-time seconds), as bench_ode does:
  fwd_s           the stack under torch.no_grad() (inference)
  fwdbwd_s        the stack with W, b, x0 requiring grad, then
                  torch.autograd.grad(xT, (x0, W, b), dy) (autograd stores every layer)
  fwdbwd_ckpt_s   the same with torch.utils.checkpoint over segments of ceil(sqrt(L)) layers
                  (stores the segment inputs, recomputes each segment in the backward)
One JSON object per (method, batch), the same fields as bench_ode:
  {"impl":"torch","kind":"time","method":"euler","D":256,"L":1000,"batch":N,"threads":T,
   "fwd_s":..,"fwdbwd_s":..,"fwdbwd_ckpt_s":..,"torch":"1.13..."}

torch.set_num_threads(T); OPENBLAS_NUM_THREADS (PyTorch's float64 matmuls go to OpenBLAS) is
left to the caller, default 1 (run_ode.sh tries 1 and T and keeps PyTorch's best).

    /usr/bin/python3 bench/ode_torch.py --data /tmp/ode --threads 2 --batch 1 --batch 64
"""
import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402  (after the environment is set)
import torch.utils.checkpoint  # noqa: E402


def load(data, name):
    """An (N,C,D,H,W) array bench_ode wrote, as (N*C*D*H, W): rows of the last dimension."""
    a = np.load(os.path.join(data, name + ".npy"))
    return torch.from_numpy(np.ascontiguousarray(a.reshape(-1, a.shape[-1])))


def rhs(x, W, b):
    return torch.tanh(torch.nn.functional.linear(x, W, b))


def euler_step(x, W, b, h):
    return x + h * rhs(x, W, b)


def rk4_step(x, W, b, h):
    k1 = rhs(x, W, b)
    k2 = rhs(x + 0.5 * h * k1, W, b)
    k3 = rhs(x + 0.5 * h * k2, W, b)
    k4 = rhs(x + h * k3, W, b)
    return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


STEPS = {"euler": euler_step, "rk4": rk4_step}


def stack(step, x, W, b, h, count):
    for _ in range(count):
        x = step(x, W, b, h)
    return x


def forward(step, x, W, b, L, segment=0):
    h = 1.0 / L
    if segment <= 0:
        return stack(step, x, W, b, h, L)
    for s0 in range(0, L, segment):
        count = min(segment, L - s0)
        x = torch.utils.checkpoint.checkpoint(stack, step, x, W, b, h, count, use_reentrant=False)
    return x


def grads(step, x0, W, b, dy, L, segment=0):
    x0 = x0.detach().requires_grad_(True)
    W = W.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    xT = forward(step, x0, W, b, L, segment)
    return (xT.detach(),) + torch.autograd.grad(xT, (x0, W, b), dy)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def best_time(fn, reps, min_time):
    best, start, r = float("inf"), time.perf_counter(), 0
    while r <= reps or time.perf_counter() - start < min_time:  # r = 0: warm-up
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        if r > 0:
            best = min(best, t)
        r += 1
    return best


def bench(method, data, n, L, threads, reps, min_time, tol, check_only):
    step = STEPS[method]
    W, b = load(data, "W"), load(data, "b").reshape(-1)
    x0, dy = load(data, f"x0_N{n}"), load(data, f"dy_N{n}")
    D = W.shape[0]
    seg = math.ceil(math.sqrt(L))
    ok = True
    got = grads(step, x0, W, b, dy, L)
    got_ck = grads(step, x0, W, b, dy, L, seg)
    ref = [load(data, f"{method}_{k}_N{n}") for k in ("xT", "dx0", "dW", "db")]
    ref[3] = ref[3].reshape(-1)
    diff = {k: rel(g, r) for k, g, r in zip(("xT", "dx0", "dW", "db"), got, ref)}
    ck = max(rel(g, r) for g, r in zip(got_ck, got))
    ok = max(diff.values()) <= tol
    print(json.dumps({"impl": "torch", "kind": "check", "method": method, "D": D, "L": L, "batch": n,
                      "rel_diff_vs_resbridge": diff, "checkpoint_vs_full": ck, "tol": tol, "ok": ok}), flush=True)
    if check_only or not ok:
        return ok
    with torch.no_grad():
        fwd = best_time(lambda: forward(step, x0, W, b, L), reps, min_time)
    full = best_time(lambda: grads(step, x0, W, b, dy, L), reps, min_time)
    ckpt = best_time(lambda: grads(step, x0, W, b, dy, L, seg), reps, min_time)
    print(json.dumps({"impl": "torch", "kind": "time", "method": method, "D": D, "L": L, "batch": n,
                      "threads": threads, "fwd_s": fwd, "fwdbwd_s": full, "fwdbwd_ckpt_s": ckpt,
                      "torch": torch.__version__, "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")}),
          flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="directory bench_ode --dump wrote")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--method", choices=sorted(STEPS), action="append")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--check-only", action="store_true")
    a = ap.parse_args()
    if a.threads < 1 or a.reps < 1 or a.layers < 1 or not a.min_time >= 0:
        ap.error("--threads, --reps and --layers must be >= 1, --min-time >= 0")
    torch.set_num_threads(a.threads)
    ok = True
    for method in a.method or ["euler"]:
        for n in a.batch or [1, 64]:
            ok = bench(method, a.data, n, a.layers, a.threads, a.reps, a.min_time, a.tol, a.check_only) and ok
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
