#!/usr/bin/python3
"""peer_torch_conv.py — PyTorch (float64) as the oracle for resbridge's conv op.

    /usr/bin/python3 tests/peer_torch_conv.py <dir written by dump_conv>

For every case in <dir>/manifest.txt, rebuilds the convolution with
torch.nn.functional.conv{1,2,3}d / conv_transpose{1,2,3}d, computes y, and dx,
dweight, dbias by torch.autograd.grad of (y * dy).sum(), and compares them with
resbridge's y, dx, dparams: max |ours - torch| / max |torch| <= 1e-12.

The conventions (conv.h): correlation as in PyTorch; weights [cout][cin][taps]
(plain) and [cin][cout][taps] (transposed); STAR stencils are a full 3^d
kernel with zeros off the star. Per active dimension:
  stride 1                 padding k//2
  stride 2, cell           padding k//2           (transposed: output_padding 1)
  stride 2, vertex, k = 3  padding 0              (transposed: output_padding 0, k -> 2k+1)
  stride 2, vertex, k = 1  samples the odd points x[1::2]: slice, then a 1x1 conv;
                           transposed: conv_transpose stride 2 (k -> 2k-1 at even
                           points), zero-pad one point on each side (-> 2k+1, odd
                           points), then add the bias everywhere.
Prints one line per case and ends with 'N passed, M failed'; exit 1 on any failure.
"""
import itertools
import sys

import numpy as np
import torch
import torch.nn.functional as F

TOL = 1e-12


def parse_manifest(path):
    cases = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            c = {"name": parts[0]}
            for kv in parts[1:]:
                k, v = kv.split("=", 1)
                c[k] = v if k in ("pattern", "grid") else int(v)
            cases.append(c)
    return cases


def to_torch(a, dims):
    """(N, C, D, H, W) -> the conv{dims}d layout (N, C, spatial...)."""
    if dims == 1:
        a = a[:, :, 0, 0, :]
    elif dims == 2:
        a = a[:, :, 0, :, :]
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float64)


def tap_positions(dims, ksize, pattern):
    """Flat indices into the ksize^dims kernel of resbridge's taps, in tap order."""
    r = ksize // 2
    offsets = list(itertools.product(range(-r, r + 1), repeat=dims))  # row-major over (dz, dy, dx)
    keep = [i for i, o in enumerate(offsets) if pattern == "full" or sum(abs(t) for t in o) <= 1]
    return keep


def run_case(c, d):
    dims, cin, cout, k = c["dims"], c["cin"], c["cout"], c["ksize"]
    stride, grid, transposed, bias = c["stride"], c["grid"], bool(c["transposed"]), bool(c["bias"])
    load = lambda what: np.load("%s/%s.%s.npy" % (d, c["name"], what))
    x_np, params, y_rb, dy_np, dx_rb, dp_rb = (load(w) for w in ("x", "params", "y", "dy", "dx", "dparams"))
    params = params.reshape(-1)
    dp_rb = dp_rb.reshape(-1)
    taps = tap_positions(dims, k, c["pattern"])
    ntaps = len(taps)
    nw = cin * cout * ntaps
    assert params.size == nw + (cout if bias else 0), (params.size, nw)

    # weights -> a full kernel (zeros off the star)
    w_taps = params[:nw].reshape((cin, cout, ntaps) if transposed else (cout, cin, ntaps))
    full = np.zeros(w_taps.shape[:2] + (k ** dims,))
    full[:, :, taps] = w_taps
    w = torch.tensor(full.reshape(w_taps.shape[:2] + (k,) * dims), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(params[nw:], dtype=torch.float64, requires_grad=True) if bias else None
    x = to_torch(x_np, dims).requires_grad_(True)
    dy = to_torch(dy_np, dims)

    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    convT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
    if stride == 1:
        y = convT(x, w, b, stride=1, padding=k // 2) if transposed else conv(x, w, b, stride=1, padding=k // 2)
    elif grid == "cell":
        if transposed:
            y = convT(x, w, b, stride=2, padding=k // 2, output_padding=1)
        else:
            y = conv(x, w, b, stride=2, padding=k // 2)
    elif k == 3:  # vertex, 3-wide: no padding; transposed k -> 2k+1
        y = convT(x, w, b, stride=2, padding=0, output_padding=0) if transposed else conv(x, w, b, stride=2, padding=0)
    else:  # vertex, 1-wide: the odd points
        if transposed:
            z = convT(x, w, None, stride=2, padding=0)  # 2k-1 points: the even ones
            y = F.pad(z, (1, 1) * dims)  # 2k+1 points, values at the odd ones
            if b is not None:
                y = y + b.view((1, -1) + (1,) * dims)
        else:
            sl = (slice(None), slice(None)) + (slice(1, None, 2),) * dims
            y = conv(x[sl], w, b)

    wants = [x, w] + ([b] if bias else [])
    grads = torch.autograd.grad((y * dy).sum(), wants)
    dx_t, dw_t = grads[0], grads[1]
    dw_taps = dw_t.detach().numpy().reshape(w_taps.shape[:2] + (k ** dims,))[:, :, taps].reshape(-1)
    dp_t = np.concatenate([dw_taps] + ([grads[2].detach().numpy()] if bias else []))

    def rel(ours, ref):
        ours = np.asarray(ours, dtype=np.float64).reshape(-1)
        ref = np.asarray(ref, dtype=np.float64).reshape(-1)
        if ours.shape != ref.shape:
            return float("inf")
        scale = max(np.abs(ref).max(), 1e-300)
        return float(np.abs(ours - ref).max() / scale)

    y_t = y.detach().numpy()
    if y_t.shape != to_torch(y_rb, dims).shape:
        return {"y-shape": float("inf")}, "y shape %s, torch %s" % (tuple(y_rb.shape), tuple(y_t.shape))
    out = {
        "y": rel(to_torch(y_rb, dims).numpy(), y_t),
        "dx": rel(to_torch(dx_rb, dims).numpy(), dx_t.detach().numpy()),
        "dw": rel(dp_rb[:nw], dp_t[:nw]),
    }
    if bias:
        out["db"] = rel(dp_rb[nw:], dp_t[nw:])
    return out, ""


def main():
    if len(sys.argv) != 2:
        print("usage: peer_torch_conv.py <dir written by dump_conv>", file=sys.stderr)
        return 2
    d = sys.argv[1]
    torch.set_num_threads(1)
    cases = parse_manifest(d + "/manifest.txt")
    if not cases:
        print("no cases in %s/manifest.txt" % d)
        print("0 passed, 1 failed")
        return 1
    passed = failed = 0
    worst = 0.0
    for c in cases:
        try:
            diffs, note = run_case(c, d)
        except Exception as e:  # a case that cannot even be rebuilt is a failure, not a crash
            diffs, note = {"error": float("inf")}, "%s: %s" % (type(e).__name__, e)
        m = max(diffs.values())
        ok = m <= TOL
        worst = max(worst, m) if ok else worst
        passed += ok
        failed += not ok
        detail = " ".join("%s %.2e" % kv for kv in diffs.items())
        print("%-5s %-36s max %.2e  (%s)%s" % ("ok" if ok else "FAIL", c["name"], m, detail,
                                                "  " + note if note else ""))
    print("largest difference among passing cases: %.2e (tolerance %.0e)" % (worst, TOL))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
