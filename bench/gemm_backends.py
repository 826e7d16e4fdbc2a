"""fp32 GEMM on the CPU: MKL (what torch uses for fp32 training) against oneDNN.

Issue 15 asks whether a GEMM route inside torch trains faster than MKL in fp32 without
changing numerics beyond fp32 rounding. torch sends fp32 `linear`/`mm` on x86 to MKL; its
only switch towards oneDNN, `torch.backends.mkldnn.matmul.fp32_precision`, takes "tf32" or
"bf16" (reduced-precision math: excluded) besides "ieee"/"none". The one exact oneDNN
route is its own tensor layout (`Tensor.to_mkldnn()` + `torch._C._nn.mkldnn_linear`,
forward only, no autograd). This script measures, for the three GEMMs of each linear
layer of a gpt2-small training step (forward, input gradient, weight gradient), the rate
of MKL on ordinary tensors, of oneDNN with both operands already in its blocked layout,
and of oneDNN including the conversions a training step would pay for activations (in)
and results (out), plus the routing of each `fp32_precision` setting.

    python bench/gemm_backends.py [--tokens 1024] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

# (name, M, K, N) of y = x @ W^T for gpt2-small with `tokens` rows: qkv, attention out,
# MLP up, MLP down, and a quarter of the 50,257-row head.
LAYERS = (
    ("qkv", 768, 2304),
    ("attn out", 768, 768),
    ("mlp up", 768, 3072),
    ("mlp down", 3072, 768),
    ("head/4", 768, 12564),
)


def rate(function: Callable[[], object], flops: float, repeats: int) -> float:
    """Best of three timings of `repeats` calls, in GFLOP/s."""
    function()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        best = min(best, (time.perf_counter() - start) / repeats)
    return flops / best / 1e9


def gemm_rates(m: int, k: int, n: int, repeats: int) -> dict[str, float]:
    """MKL and oneDNN rates of one (m x k) @ (k x n) product, and the largest difference."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    x_blocked, w_blocked = x.to_mkldnn(), w.to_mkldnn()
    flops = 2 * m * k * n
    mkl = rate(lambda: F.linear(x, w), flops, repeats)
    onednn = rate(lambda: torch._C._nn.mkldnn_linear(x_blocked, w_blocked, None), flops, repeats)
    converted = rate(
        lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w_blocked, None).to_dense(),
        flops,
        repeats,
    )
    difference = F.linear(x, w) - torch._C._nn.mkldnn_linear(x_blocked, w_blocked, None).to_dense()
    scale = F.linear(x, w).abs().max()
    return {
        "mkl": mkl,
        "onednn": onednn,
        "onednn_converted": converted,
        "rel_diff": float(difference.abs().max() / scale),
    }


def precision_routes(tokens: int, repeats: int) -> dict[str, str]:
    """For each `fp32_precision` setting: the rate, and whether results differ from MKL's."""
    x, w = torch.randn(tokens, 768), torch.randn(3072, 768)
    reference = F.linear(x, w)
    routes = {}
    setting = torch.backends.mkldnn.matmul.fp32_precision
    try:
        for precision in ("none", "ieee", "tf32", "bf16"):
            torch.backends.mkldnn.matmul.fp32_precision = precision
            exact = torch.equal(F.linear(x, w), reference)
            gflops = rate(lambda: F.linear(x, w), 2 * tokens * 768 * 3072, repeats)
            routes[precision] = (
                f"{gflops:.1f} GFLOP/s, {'bitwise MKL' if exact else 'different results'}"
            )
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = setting
    return routes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1024, help="rows: tokens in a training batch")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16 "
        f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}, load {os.getloadavg()[0]:.2f}"
    )
    print(
        "\n| GEMM (M x K x N) | MKL GFLOP/s | oneDNN blocked | oneDNN incl. conversions | blocked / MKL | converted / MKL | max rel. diff |"
    )
    print("|---|---|---|---|---|---|---|")
    totals = {"mkl": 0.0, "onednn": 0.0, "onednn_converted": 0.0}
    t = args.tokens
    for name, k, n in LAYERS:
        # forward y = x W^T (t, k, n); input gradient dx = dy W (t, n, k); weight gradient dW = dy^T x (n, t, k)
        for label, (m, kk, nn_) in (("fwd", (t, k, n)), ("dx", (t, n, k)), ("dW", (n, t, k))):
            rates = gemm_rates(m, kk, nn_, args.repeats)
            for key in totals:
                totals[key] += 2 * m * kk * nn_ / rates[key]  # seconds x 1e9
            print(
                f"| {name} {label} ({m} x {kk} x {nn_}) | {rates['mkl']:.1f} | {rates['onednn']:.1f} | "
                f"{rates['onednn_converted']:.1f} | {rates['onednn'] / rates['mkl']:.2f}x | "
                f"{rates['onednn_converted'] / rates['mkl']:.2f}x | {rates['rel_diff']:.1e} |"
            )
    print(
        f"\nall GEMMs of one layer set, time ratio MKL / oneDNN: blocked {totals['mkl'] / totals['onednn']:.2f}x, "
        f"with conversions {totals['mkl'] / totals['onednn_converted']:.2f}x"
    )
    print("\ntorch.backends.mkldnn.matmul.fp32_precision routes for F.linear (1024 x 768 x 3072):")
    for precision, result in precision_routes(args.tokens, args.repeats).items():
        print(f"  {precision}: {result}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
