"""How much does the hooked importance pass cost compared with a plain forward pass? (target: <= 1.15x)

All three runs use the SAME batches and autocast setting, under ``torch.inference_mode``; after one warm-up
each they are timed ``--repeats`` times in alternating order. Two ratios are printed:

- importance pass / full forward ``model(ids)``: what the issue's target refers to (a forward pass of the
  model over the calibration set). The importance pass skips the LM head (the scores need no logits), which
  pays for the hooks on a small-vocabulary-heavy model like SmolLM2 (its tied 49k x 576 head is ~20% of the
  forward FLOPs);
- importance pass / decoder-only forward (the same modules, no hooks): the cost of the hooks alone.

A fourth run, the importance pass without ``head_gram`` (the joint head statistic), shows what that statistic costs.
``--block-importance`` adds the depth criterion BI to the pass (``estimate_importance(block_importance=True)``);
by default the pass computes what the notebooks ask of it, the width scores.

Both are given for the best (minimum) time of the repeats, the most robust statistic when other jobs share
the cores, and for the median; wall time and this process's CPU time. ``--threads 1`` is cleanest on a busy
machine. The default size runs in well under a minute on 2 CPU cores.

    python benchmarks/importance_overhead.py
    python benchmarks/importance_overhead.py --batches 4 --batch-size 4 --seq 512 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from helpers import architecture as arch  # noqa: E402
from helpers.hardware import autocast as fast_autocast  # noqa: E402
from helpers.hardware import best_device  # noqa: E402
from helpers.importance import estimate_importance  # noqa: E402
from helpers.models import DEFAULT_TEACHER, load_model  # noqa: E402


def make_batches(tokenizer, vocab_size: int, args: argparse.Namespace) -> list[torch.Tensor]:
    """``--batches`` LongTensors [batch_size, seq]: held-out corpus blocks, or seeded random token ids."""
    n = args.batches * args.batch_size
    if args.data == "heldout":
        from helpers.data import load_blocks

        blocks = load_blocks(tokenizer, split="heldout", block_size=args.seq, max_blocks=n)
        if len(blocks) < n:
            raise SystemExit(f"Only {len(blocks)} held-out blocks of {args.seq} tokens; use fewer or --data random.")
    else:
        blocks = torch.randint(0, vocab_size, (n, args.seq), generator=torch.Generator().manual_seed(0))
    return list(blocks.split(args.batch_size))


def plain_forward(model, batches: list[torch.Tensor], autocast: bool, decoder_only: bool) -> None:
    net = arch.base(model) if decoder_only else model
    with torch.inference_mode(), fast_autocast(model.device, enabled=autocast):
        for ids in batches:
            net(input_ids=ids.to(model.device), use_cache=False)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). CPU time barely moves when other jobs share the cores."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_TEACHER, help="embedded alias, local folder or Hub id")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data", choices=("random", "heldout"), default="random")
    p.add_argument("--no-autocast", action="store_true", help="fp32 everywhere (default: bf16 autocast if fast)")
    p.add_argument("--block-importance", action="store_true", help="also compute Block Importance in the pass")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = best_device()
    model, tok = load_model(args.model, device=device)
    batches = make_batches(tok, model.config.vocab_size, args)
    autocast = not args.no_autocast
    runs = {
        "forward": lambda: plain_forward(model, batches, autocast, decoder_only=False),
        "decoder-only forward": lambda: plain_forward(model, batches, autocast, decoder_only=True),
        "importance pass": lambda: estimate_importance(model, batches, autocast=autocast, progress=False,
                                                       block_importance=args.block_importance),
        "importance, no head_gram": lambda: estimate_importance(model, batches, autocast=autocast, progress=False,
                                                                block_importance=args.block_importance, head_gram=False),
    }
    for fn in runs.values():  # warm-up: allocator, kernels, lazy init
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for r in range(args.repeats):
        names = list(runs) if r % 2 == 0 else list(runs)[::-1]  # alternate the order: no position bias
        for name in names:
            times[name].append(timed(runs[name], device))

    tokens = args.batches * args.batch_size * args.seq
    print(f"model={args.model} device={device} autocast={autocast} block_importance={args.block_importance} "
          f"threads={torch.get_num_threads()} "
          f"batches={args.batches}x[{args.batch_size}, {args.seq}] ({tokens} tokens) repeats={args.repeats}")
    summary = []
    for k, clock in enumerate(("wall", "CPU")):
        print(f"{clock} time (s), every repeat:")
        for name, ts in times.items():
            print(f"  {name:<22} " + ", ".join(f"{x[k]:.3f}" for x in ts))
        for stat_name, stat in (("best", min), ("median", statistics.median)):
            t = {name: stat(x[k] for x in ts) for name, ts in times.items()}
            summary.append((f"{clock} {stat_name}", t["importance pass"] / t["forward"],
                            t["importance pass"] / t["decoder-only forward"], tokens / t["importance pass"],
                            t["importance, no head_gram"] / t["forward"]))
    print("\nratios                importance/forward (target <= 1.15)   importance/decoder-only (hooks alone)"
          "   importance tokens/s   without head_gram/forward")
    for name, full, dec, tps, no_gram in summary:
        print(f"  {name:<20} {full:>12.3f}                          {dec:>12.3f}                           {tps:8.0f}"
              f"   {no_gram:>12.3f}")


if __name__ == "__main__":
    main()
