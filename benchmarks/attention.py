"""Attention kernels side by side: forward + backward time and peak memory over context lengths.

    python benchmarks/attention.py                       # naive vs sdpa, contexts 64 .. 2048
    python benchmarks/attention.py --contexts 1024 --json attention.json

Each row times the registered kernels (nanolab.components.attention) on the same q, k, v (B, nh, T, hs) with
a causal mask: y = kernel(q, k, v), then y.backward(grad). The kernels are timed in turns in one process
(medians after warm-up); the ratio columns compare each kernel with the first one.
"""

from __future__ import annotations

import torch

from common import interleave, load_warning, machine, median, parser, peak_memory, print_table, setup, write_json
from nanolab import registry


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--kernels", nargs="+", default=["naive", "sdpa"], help="registered attention kernels")
    p.add_argument("--contexts", nargs="+", type=int, default=[64, 128, 256, 512, 1024, 2048])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed calls per kernel and context")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    device = setup(args)
    if warning := load_warning():
        print(warning)
    kernels = {name: registry.get("attention", name)().to(device) for name in args.kernels}
    first = args.kernels[0]
    rows = []
    for T in args.contexts:
        gen = torch.Generator(device=device).manual_seed(T)
        shape = (args.batch, args.heads, T, args.head_dim)
        q, k, v, grad = (torch.randn(shape, device=device, generator=gen) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_(True)

        def step(kernel):
            kernel(q, k, v).backward(grad)
            q.grad = k.grad = v.grad = None

        calls = {name: (lambda kernel=kernel: step(kernel)) for name, kernel in kernels.items()}
        times = interleave(calls, args.steps, args.warmup, device)
        with torch.no_grad():
            outputs = {name: kernel(q, k, v) for name, kernel in kernels.items()}
        for name in args.kernels:
            row = {"kernel": name, "context": T, "ms": 1e3 * median(times[name]),
                   "peak_MB": peak_memory(lambda: calls[name](), device) / 2**20,
                   "max_abs_diff": (outputs[name] - outputs[first]).abs().max().item()}
            rows.append(row)
        base = rows[-len(args.kernels)]
        for row in rows[-len(args.kernels):]:
            row["speedup"] = base["ms"] / row["ms"]
            row["memory_saving"] = base["peak_MB"] / row["peak_MB"] if row["peak_MB"] else None
        print_table(f"context {T}", rows[-len(args.kernels):], list(rows[-1]))

    figures = {"benchmark": "attention", "machine": machine(device), "shape": vars(args), "rows": rows,
               "note": f"speedup and memory_saving: {first}'s median ms and peak MB over the row's"}
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
