#!/usr/bin/python3
"""peer_torch_unet.py — PyTorch (float64) as the oracle for resbridge's U-Net (unet.h).

    /usr/bin/python3 tests/peer_torch_unet.py <dir written by dump_unet>

For every case in <dir>/manifest.txt, rebuilds the network with torch.nn.functional from
resbridge's flat parameter vector (lifting conv, the V/W/F-cycle written out below with
the level operators A, B, R, P, projection conv) and checks the output, the MSE loss, the
gradient of every parameter and of the input, all to <= 1e-10 relative
(max |ours - torch| / max |torch|). Conventions (conv.h): stride-1 convs 3^d zero-padded
'same' (padding 1); restriction a stride-2 conv without padding (2k+1 -> k points);
prolongation its transpose (conv_transpose, stride 2, no padding: k -> 2k+1).
Prints one line per case and ends with 'N passed, M failed'; exit 1 on failure.
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

TOL = 1e-10
torch.set_default_dtype(torch.float64)

ACT = {"identity": lambda t: t, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
       "gelu": lambda t: F.gelu(t)}


class UNet:
    def __init__(self, flat, dim, levels, cin, c, cout, pre, post, cycles, act, cycle):
        self.flat, self.at, self.params = flat, 0, []
        self.dim, self.levels, self.pre, self.post, self.cycles = dim, levels, pre, post, cycles
        self.act, self.cycle = ACT[act], cycle
        self.identity = act == "identity"
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dim]
        self.convT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dim]
        k = (3,) * dim
        self.lift = (self.take((c, cin) + k), self.take((c,)))
        self.A, self.B, self.R, self.P = [], [], [], []
        for l in range(levels):
            self.A.append(self.take((c, c) + k))
            self.B.append(self.take((c, c) + k))
            if l + 1 < levels:
                self.R.append(self.take((c, c) + k))
                self.P.append(self.take((c, c) + k))  # transposed: (cin, cout, ...)
        self.proj = (self.take((cout, c) + k), self.take((cout,)))
        assert self.at == flat.numel(), f"{self.at} parameters used of {flat.numel()}"

    def take(self, shape):
        count = int(np.prod(shape))
        t = self.flat[self.at:self.at + count].clone().reshape(shape).requires_grad_(True)
        self.at += count
        self.params.append(t)
        return t

    # the level operators
    def Aop(self, l, u):
        return self.conv(u, self.A[l], padding=1)

    def S(self, l, r):
        if self.identity:
            return self.conv(r, self.B[l], padding=1)
        return self.act(self.conv(self.act(r), self.B[l], padding=1))

    def smooth(self, l, f, u, steps):
        for _ in range(steps):
            u = u + self.S(l, f - self.Aop(l, u))  # h = 1
        return u

    def run(self, l, f, u, kind):
        if l + 1 == self.levels:  # the coarsest level: smoothed
            return self.smooth(l, f, u, self.pre)
        u = self.smooth(l, f, u, self.pre)
        fc = self.conv(f - self.Aop(l, u), self.R[l], stride=2)
        uc = torch.zeros_like(fc)
        if kind == "V":
            uc = self.run(l + 1, fc, uc, "V")
        elif kind == "W":
            uc = self.run(l + 1, fc, uc, "W")
            if l + 2 < self.levels:
                uc = self.run(l + 1, fc, uc, "W")
        else:
            uc = self.run(l + 1, fc, uc, "F")
            if l + 2 < self.levels:
                uc = self.run(l + 1, fc, uc, "V")
        u = u + self.convT(uc, self.P[l], stride=2)
        return self.smooth(l, f, u, self.post)

    def forward(self, x):
        f = self.conv(x, self.lift[0], self.lift[1], padding=1)
        u = torch.zeros_like(f)
        for _ in range(self.cycles):
            u = self.run(0, f, u, self.cycle)
        return self.conv(u, self.proj[0], self.proj[1], padding=1)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    m = np.max(np.abs(b))
    return np.max(np.abs(a - b)) / (m if m > 0 else 1.0)


def check(d, line):
    v, dim, n, levels, cin, c, cout, batch, pre, post, cycles, act, cycle = line.split()
    dim, n, levels, cin, c, cout, batch, pre, post, cycles = map(int, (dim, n, levels, cin, c, cout, batch, pre, post, cycles))
    load = lambda what: np.load(f"{d}/{v}_{what}.npy")
    net = UNet(torch.from_numpy(load("params").ravel().copy()), dim, levels, cin, c, cout, pre, post, cycles, act, cycle)
    grid = (n,) * dim
    x = torch.from_numpy(load("x").reshape((batch, cin) + grid).copy()).requires_grad_(True)
    target = torch.from_numpy(load("target").reshape((batch, cout) + grid).copy())
    y = net.forward(x)
    loss = F.mse_loss(y, target)
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in net.params])
    errs = {"y": rel(load("y"), y.detach()), "loss": rel(load("loss"), loss.detach().reshape(1)),
            "grad": rel(load("grad"), grad), "dx": rel(load("dx"), x.grad)}
    ok = all(e <= TOL for e in errs.values())
    print(f"{'ok  ' if ok else 'FAIL'} {v}: {dim}D n={n} {levels} levels {cin}->{c}->{cout} N={batch} "
          f"{cycle}({pre},{post}) x{cycles} {act}, {grad.numel()} params: " +
          ", ".join(f"{k} {e:.1e}" for k, e in errs.items()))
    return ok


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    d = sys.argv[1]
    passed = failed = 0
    with open(f"{d}/manifest.txt") as fh:
        for line in fh:
            if line.strip():
                if check(d, line):
                    passed += 1
                else:
                    failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
