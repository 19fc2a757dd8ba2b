#!/usr/bin/python3
"""peer_torch_nets.py — PyTorch (float64) as the oracle for resbridge's networks.

    /usr/bin/python3 tests/peer_torch_nets.py <dir written by dump_nets>

For every network in <dir>/manifest.txt (ResNet with v1 blocks, with v2
blocks, and the plain twin; identity and 1x1 projection shortcuts), rebuilds
it with torch.nn.functional from resbridge's flat parameter vector, in the
order nets/model.c builds the layers, and checks:
  * training-mode forward: logits and the cross-entropy loss,
  * backward: the gradient of every parameter and of the input,
    all to <= 1e-10 relative (max |ours - torch| / max |torch|);
  * ten SGD steps (momentum 0.9, weight decay 5e-4, lr 0.05, torch.optim.SGD) on
    the same batch: the ten losses to <= 1e-9, the final parameters and the
    batch-norm running statistics (momentum 0.1, unbiased variance) to <= 1e-9.
Prints one line per network and ends with 'N passed, M failed'; exit 1 on failure.
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

TOL, TOL_STEPS = 1e-10, 1e-9
torch.set_default_dtype(torch.float64)


class Net:
    """The network of nets/model.c (conv nets, depth 6n+2) over a flat parameter vector."""

    def __init__(self, flat, block, depth, width, in_ch, classes):
        self.flat = flat
        self.at = 0
        self.params = []
        self.bn_stats = []  # (running_mean, running_var) in construction order
        n = (depth - 2) // 6
        plain = block == "plain"
        self.layers = []
        self.layers.append(self.conv(in_ch, width, 3, 1))
        self.layers.append(self.bn(width))
        self.layers.append(("relu",))
        c = width
        for s in range(3):
            w = width << s
            for k in range(n):
                stride = 2 if s > 0 and k == 0 else 1
                self.layers.append(self.block(block, plain, c, w, stride))
                c = w
        if block == "v2":
            self.layers.append(self.bn(c))
            self.layers.append(("relu",))
        self.layers.append(("gap",))
        W = self.take(classes * c).reshape(classes, c)
        b = self.take(classes)
        self.layers.append(("dense", W, b))
        assert self.at == flat.numel(), f"{self.at} parameters used of {flat.numel()}"

    def take(self, count):
        t = self.flat[self.at:self.at + count].clone().requires_grad_(True)
        self.at += count
        self.params.append(t)
        return t

    def conv(self, cin, cout, k, stride):
        return ("conv", self.take(cout * cin * k * k).reshape(cout, cin, k, k), stride, k // 2)

    def bn(self, c):
        stats = (torch.zeros(c), torch.ones(c))
        self.bn_stats.append(stats)
        return ("bn", self.take(c), self.take(c), stats)

    def branch(self, cin, cout, stride):  # conv3-BN-ReLU-conv3-BN
        return [self.conv(cin, cout, 3, stride), self.bn(cout), ("relu",), self.conv(cout, cout, 3, 1), self.bn(cout)]

    def block(self, kind, plain, cin, cout, stride):
        identity = cin == cout and stride == 1
        if plain:
            return ("seq", self.branch(cin, cout, stride) + [("relu",)])
        if kind == "v2":
            if identity:
                F_ = [self.bn(cin), ("relu",), self.conv(cin, cout, 3, stride), self.bn(cout), ("relu",), self.conv(cout, cout, 3, 1)]
                return ("residual", F_)
            P = [self.conv(cin, cout, 1, stride)]
            F_ = [self.bn(cin), ("relu",), self.conv(cin, cout, 3, stride), self.bn(cout), ("relu",), self.conv(cout, cout, 3, 1)]
            return ("sum", P, F_)
        # v1: ReLU(shortcut + F)
        if identity:
            return ("seq", [("residual", self.branch(cin, cout, stride)), ("relu",)])
        P = [self.conv(cin, cout, 1, stride), self.bn(cout)]
        return ("seq", [("sum", P, self.branch(cin, cout, stride)), ("relu",)])

    def run(self, layers, x, track):
        for layer in layers:
            x = self.apply(layer, x, track)
        return x

    def apply(self, layer, x, track):
        kind = layer[0]
        if kind == "conv":
            return F.conv2d(x, layer[1], stride=layer[2], padding=layer[3])
        if kind == "bn":
            rm, rv = layer[3]
            if track:
                return F.batch_norm(x, rm, rv, layer[1], layer[2], training=True, momentum=0.1, eps=1e-5)
            return F.batch_norm(x, None, None, layer[1], layer[2], training=True, eps=1e-5)
        if kind == "relu":
            return F.relu(x)
        if kind == "gap":
            return x.mean(dim=(2, 3))
        if kind == "dense":
            return F.linear(x.flatten(1), layer[1], layer[2])
        if kind == "seq":
            return self.run(layer[1], x, track)
        if kind == "residual":
            return x + self.run(layer[1], x, track)
        if kind == "sum":
            return self.run(layer[1], x, track) + self.run(layer[2], x, track)
        raise ValueError(kind)

    def __call__(self, x, track=False):
        return self.run(self.layers, x, track)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check(d, name, block, depth, width, h, w, classes, batch):
    load = lambda what: np.load(f"{d}/{name}_{what}.npy").astype(np.float64)
    flat = torch.tensor(load("params").ravel())
    x = torch.tensor(load("x")).reshape(batch, 1, h, w).requires_grad_(True)
    labels = torch.tensor(load("labels").ravel().astype(np.int64))
    net = Net(flat, block, depth, width, 1, classes)
    logits = net(x)
    loss = F.cross_entropy(logits, labels)
    grads = torch.autograd.grad(loss, net.params + [x])
    g = torch.cat([t.reshape(-1) for t in grads[:-1]])
    errs = {
        "logits": rel(load("logits").reshape(batch, classes), logits.detach().numpy()),
        "loss": rel(load("loss"), loss.item()),
        "grad": rel(load("grad"), g.numpy()),
        "dx": rel(load("dx"), grads[-1].numpy()),
    }
    # ten SGD steps on the same batch, tracking the running statistics
    net = Net(flat, block, depth, width, 1, classes)
    opt = torch.optim.SGD(net.params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        l = F.cross_entropy(net(x.detach(), track=True), labels)
        losses.append(l.item())
        l.backward()
        opt.step()
    errs["losses10"] = rel(load("losses"), losses)
    errs["params10"] = rel(load("final_params"), torch.cat([p.detach().reshape(-1) for p in net.params]).numpy())
    stats = [s for pair in net.bn_stats for s in pair]
    errs["stats10"] = rel(load("final_bn_stats"), torch.cat(stats).numpy())
    ok = all(v <= (TOL_STEPS if k.endswith("10") else TOL) for k, v in errs.items())
    print(f"{'PASS' if ok else 'FAIL'} {name:6s} ({block}, depth {depth}, width {width}, {flat.numel()} parameters): "
          + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    return ok


def main():
    d = sys.argv[1]
    passed = failed = 0
    with open(f"{d}/manifest.txt") as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if check(d, p[0], p[1], *map(int, p[2:])):
                passed += 1
            else:
                failed += 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
