"""Sampling speed with and without the KV cache: tokens per second of model.generate.

    python benchmarks/generate.py                        # 100, 500 and 2,000 new tokens, context 2048
    python benchmarks/generate.py --lengths 500 --json generate.json

The model has the baseline's widths (4 layers x 4 heads x 128) but a context of --block-size tokens (default
2048), so that every prompt + new tokens fits in it: then the cache runs one token per step. Past block_size,
model.generate re-prefills the last block_size tokens at every step (so that cached and uncached generation
stay exactly equal, see its docstring): the cache then saves nothing. The last row shows that regime with a
--short-block context. Cached and uncached calls draw from generators seeded alike and must give the same
tokens (the `same_tokens` column).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common import interleave, load_warning, machine, median, parser, print_table, setup, write_json
from nanolab import load_spec
from nanolab.model import build_model

BASELINE = Path(__file__).parents[1] / "experiments" / "baseline.yaml"

VOCAB = 65  # Tiny Shakespeare's characters; the weights are untrained, the speed does not depend on them


def model_with_context(block_size: int, device: torch.device):
    cfg = load_spec(BASELINE, overrides=[f"data.block_size={block_size}"])
    torch.manual_seed(0)
    return build_model(cfg.model, vocab_size=VOCAB, block_size=block_size).to(device).eval()


def measure(model, prompt, new_tokens: int, repeats: int, device) -> dict:
    """Median seconds of generate(new_tokens) with and without the cache, timed in turns."""
    outputs = {}

    def call(use_cache: bool):
        gen = torch.Generator(device=device).manual_seed(0)
        outputs[use_cache] = model.generate(prompt, new_tokens, temperature=1.0, use_cache=use_cache, generator=gen)

    times = interleave({"cached": lambda: call(True), "uncached": lambda: call(False)}, repeats, 0, device, turn=1)
    cached, uncached = median(times["cached"]), median(times["uncached"])
    return {"block_size": model.cfg.block_size, "prompt": prompt.size(1), "new_tokens": new_tokens,
            "cached_tok_s": new_tokens / cached, "uncached_tok_s": new_tokens / uncached,
            "speedup": uncached / cached, "same_tokens": torch.equal(outputs[True], outputs[False])}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[100, 500, 2000], help="new tokens per call")
    p.add_argument("--block-size", type=int, default=2048, help="context of the model for --lengths")
    p.add_argument("--short-block", type=int, default=256, help="context of the past-block_size row (0: skip)")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row and mode")
    args = p.parse_args()
    device = setup(args)
    if warning := load_warning():
        print(warning)
    prompt = torch.randint(VOCAB, (1, args.prompt), generator=torch.Generator().manual_seed(0)).to(device)
    model = model_with_context(args.block_size, device)
    model.generate(prompt, 8)  # warm-up: first-call allocations, thread pools
    rows = [measure(model, prompt, n, args.repeats, device) for n in args.lengths]
    if args.short_block:
        rows.append(measure(model_with_context(args.short_block, device), prompt, 2 * args.short_block,
                            args.repeats, device))
    for row in rows:
        row["past_block_size"] = row["prompt"] + row["new_tokens"] > row["block_size"]
    print_table("generate: tokens/s at batch 1 (median of --repeats calls)", rows, list(rows[0]))
    write_json(args.json, {"benchmark": "generate", "machine": machine(device), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
