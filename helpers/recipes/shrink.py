"""The whole recipe as one command: ``python -m helpers shrink`` (importance -> pruning -> distillation ->
evaluation -> a stock checkpoint with its recipe and model card), the same tested code the notebooks use.

::

    python -m helpers shrink --teacher smollm2-135m-instruct --target-params 0.6 --kind width --tokens 200000 --out runs/mine
    accelerate launch --multi_gpu --num_processes 8 -m helpers shrink --teacher meta-llama/Llama-3.1-8B \\
        --target-params 4.5B --kind width --tokens 100000000 --block-size 4096 --out out/llama-4.5b

Every option is checked before any model loads (:func:`check_options`). Under ``accelerate launch`` the
distillation runs data-parallel through ``transformers.Trainer`` (DDP; FSDP through an accelerate config): every
process prunes the same student (deterministic), trains its share of each global batch, and the main process
evaluates and saves. ``--save-steps`` writes checkpoints beside ``--out``; ``--resume`` continues from the latest.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..models import DEFAULT_TEACHER

__all__ = ["ShrinkOptions", "parse_target", "check_options", "shrink", "main"]

KINDS = ("width", "depth", "both")
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9}


@dataclass
class ShrinkOptions:
    """What ``shrink`` does; the command's options (``--help`` documents each)."""

    out: Path
    teacher: str = DEFAULT_TEACHER
    target_params: str = "0.6"
    kind: str = "width"
    tokens: int = 65536
    data: str = "embedded"
    block_size: int = 512
    batch_size: int = 1
    grad_accum: int = 1
    learning_rate: float = 1e-3
    calibration_samples: int = 128
    eval_windows: int = 16
    seed: int = 0
    save_steps: int = 0
    resume: bool = False
    bf16: str = "auto"
    cache_top_k: int = 0
    curve_points: int = 0
    speed_repeats: int = 5


def parse_target(value: str | float | int, teacher_params: int | None = None) -> float | int:
    """``"0.6"`` -> a fraction of the teacher's parameters; ``"80M"``, ``"1.5B"``, ``"80000000"`` -> a count.
    With ``teacher_params`` the result is a count, checked to lie below the teacher's."""
    text = str(value).strip().upper().replace("_", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMB]?)", text)
    if not match:
        raise ValueError(f"--target-params {value!r} is not understood; allowed: a fraction of the teacher in (0, 1) "
                         "such as 0.6, or a count such as 80M, 1.5B or 80000000")
    number, suffix = float(match.group(1)), match.group(2)
    target: float | int = number if number < 1 and not suffix else int(number * _SUFFIX[suffix])
    if isinstance(target, float) and not 0 < target < 1:
        raise ValueError(f"--target-params {value!r}: a fraction must be in (0, 1)")
    if teacher_params is None:
        return target
    count = int(target * teacher_params) if isinstance(target, float) else target
    if not 0 < count < teacher_params:
        raise ValueError(f"--target-params {value!r} = {count:,} parameters; allowed: fewer than the teacher's "
                         f"{teacher_params:,}")
    return count


def _positive(opts: ShrinkOptions, *names: str) -> None:
    for name in names:
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} {value!r} is invalid; allowed: a number > 0")


def check_options(opts: ShrinkOptions, num_processes: int = 1) -> int:
    """Every option, before any model loads; returns the optimizer steps (``tokens`` over the tokens per step)."""
    parse_target(opts.target_params)
    if opts.kind not in KINDS:
        raise ValueError(f"--kind {opts.kind!r} is invalid; allowed: {', '.join(KINDS)}")
    _positive(opts, "tokens", "block_size", "batch_size", "grad_accum", "learning_rate", "calibration_samples",
              "eval_windows")
    if opts.block_size < 2 or opts.save_steps < 0 or opts.bf16 not in ("auto", "on", "off"):
        raise ValueError(f"--block-size must be >= 2, --save-steps >= 0 and --bf16 auto|on|off; got "
                         f"{opts.block_size}, {opts.save_steps}, {opts.bf16!r}")
    if opts.cache_top_k < 0 or opts.curve_points < 0 or opts.speed_repeats < 1:
        raise ValueError(f"--cache-top-k and --curve-points must be >= 0 and --speed-repeats >= 1; got "
                         f"{opts.cache_top_k}, {opts.curve_points}, {opts.speed_repeats}")
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    local = Path(opts.data)
    if opts.data != "embedded" and (local.suffix or "/" in opts.data or opts.data.startswith(".")) and not local.exists():
        raise FileNotFoundError(f"--data {opts.data!r}: no such file or folder (a .txt/.jsonl file or folder, a saved "
                                "datasets folder, 'embedded', or a datasets Hub name such as 'wikitext:wikitext-2-raw-v1')")
    per_step = opts.block_size * opts.batch_size * opts.grad_accum * num_processes
    if opts.tokens < per_step:
        raise ValueError(f"--tokens {opts.tokens} is less than one optimizer step ({per_step} tokens: block size x "
                         f"batch size x grad accumulation x {num_processes} process(es))")
    return opts.tokens // per_step


def _blocks(tokenizer, source: str, split: str, block_size: int, max_blocks: int):
    """Token blocks of ``source``'s split; a local file or folder holds out every 5th document."""
    from .. import data as D

    if not Path(source).exists():
        return D.load_blocks(tokenizer, source, split, block_size, max_blocks)
    docs = [d for i, d in enumerate(D.load_texts(source)) if (i % 5 == 4) == (split == "heldout")]
    return D.token_blocks(docs, tokenizer, block_size, max_blocks)


def _student(teacher, batches, target: int, kind: str):
    """Prune a new student of ``kind`` near ``target`` parameters (the teacher is unchanged)."""
    from ..pruning import candidate_architectures
    from .lab import prune_depth_iteratively
    from .progressive import prune_width_to, width_sizes
    from .students import _unevenness

    found = candidate_architectures(teacher.config, target, kinds=(kind,), tolerance=0.05 if kind != "depth" else 0.1)
    if not found:
        raise ValueError(f"No {kind} architecture within tolerance of {target:,} parameters; try another --kind or "
                         "--target-params")
    best = found[0] if kind == "depth" else min(
        found, key=lambda c: (round(_unevenness(teacher.config, c), 2), abs(c["error"])))
    model = teacher
    if best["num_hidden_layers"] < teacher.config.num_hidden_layers:  # one-shot drop-one layer scores
        model = prune_depth_iteratively(teacher, batches[:2], best["num_hidden_layers"], steps=1)
    if kind != "depth":
        model = prune_width_to(model, batches, width_sizes(best))
    return model, best


def _processes() -> tuple[int, bool, "torch.device"]:
    """(world size, is this the main process, this process's device) from the launcher's environment
    (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; a plain run is 1 process)."""
    import os

    import torch

    from ..hardware import best_device

    world, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    device = best_device()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
    return world, rank == 0, device


def shrink(opts: ShrinkOptions) -> Path | None:
    """Run the recipe (module doc). Returns the output folder on the main process (None on the others)."""
    world, main_process, device = _processes()
    steps = check_options(opts, world)
    from .. import data as D
    from ..models import load_model
    from ..pruning import count_parameters

    t0 = time.perf_counter()
    say = (lambda text: print(f"[shrink {time.perf_counter() - t0:6.0f} s] {text}", flush=True)) \
        if main_process else (lambda text: None)
    teacher, tokenizer = load_model(opts.teacher, device=device)
    n_teacher = count_parameters(teacher.config)
    target = parse_target(opts.target_params, n_teacher)
    say(f"teacher {opts.teacher}: {n_teacher:,} parameters; target {target:,} ({target / n_teacher:.0%}), {opts.kind}")
    calib_block = min(opts.block_size, 512)
    calib = D.sample_batches(_blocks(tokenizer, opts.data, "train", calib_block, 4 * opts.calibration_samples),
                             opts.calibration_samples, min(8, opts.calibration_samples), seed=opts.seed)
    student, arch = _student(teacher, calib, target, opts.kind)
    say(f"pruned: {count_parameters(student.config):,} parameters, layers {arch['num_hidden_layers']}, hidden "
        f"{arch['hidden_size']}, MLP {arch['intermediate_size']}, heads {arch['num_attention_heads']}/"
        f"{arch['num_key_value_heads']}")
    result, seconds = _train(opts, teacher, student, tokenizer, steps, world, main_process, say)
    if not main_process:
        return None
    return _finish(opts, teacher, student, tokenizer, result, arch, seconds, say)


def _heldout(tokenizer, source: str, n_windows: int, config):
    """``n_windows`` held-out evaluation windows of ``source`` ``[n, window]``, the window the protocol's
    (``PERPLEXITY_WINDOW``) or the teacher ``config``'s context if shorter."""
    from ..evaluate import PERPLEXITY_WINDOW

    window = min(PERPLEXITY_WINDOW, config.max_position_embeddings)
    return _blocks(tokenizer, source, "heldout", window, n_windows)


def _train(opts: ShrinkOptions, teacher, student, tokenizer, steps: int, world: int, main_process: bool, say):
    """Distil (from a top-k logit cache when ``--cache-top-k``); returns the result and the seconds it took
    (cache building included)."""
    from .. import data as D
    from ..data import REAL_TEXT
    from ..distill import DistillConfig, cached_or_built, distill

    start = time.perf_counter()
    n_blocks = steps * opts.batch_size * opts.grad_accum * world
    train = D.training_blocks(tokenizer, opts.block_size, n_blocks) if opts.data == "embedded" else \
        {"input_ids": _blocks(tokenizer, opts.data, "train", opts.block_size, n_blocks)}
    out = Path(opts.out)
    cache = None
    if opts.cache_top_k:  # one teacher pass over the training blocks, kept beside --out and reused by later runs
        say(f"teacher top-{opts.cache_top_k} logits of {len(train['input_ids'])} blocks (cached once)")
        cache = cached_or_built(out.parent / f".teacher-top{opts.cache_top_k}-{_slug(opts)}.safetensors", teacher,
                                train, top_k=opts.cache_top_k, progress=main_process)
    checkpoints = out.parent / f".{out.name}.checkpoints"
    resume = opts.resume and checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    curve = _heldout(tokenizer, REAL_TEXT, opts.eval_windows, teacher.config) if opts.curve_points else None
    config = DistillConfig(max_steps=steps, batch_size=opts.batch_size, grad_accum=opts.grad_accum,
                           learning_rate=opts.learning_rate, seed=opts.seed, logging_steps=max(1, steps // 20),
                           bf16={"auto": "auto", "on": True, "off": False}[opts.bf16], warmup_ratio=0.05,
                           save_steps=opts.save_steps, output_dir=str(checkpoints) if opts.save_steps or resume else None,
                           resume_from_checkpoint=True if resume else None, disable_tqdm=not main_process,
                           eval_steps=max(1, steps // opts.curve_points) if opts.curve_points else 0)
    say(f"distilling: {steps} steps x {opts.block_size * opts.batch_size * opts.grad_accum * world:,} tokens "
        f"on {world} process(es){' (resumed)' if resume else ''}{', real-text curve' if curve is not None else ''}")
    result = distill(student, None if cache is not None else teacher, train, config, eval_blocks=curve,
                     tokenizer=tokenizer, teacher_logits=cache)
    return result, time.perf_counter() - start


def _slug(opts: ShrinkOptions) -> str:
    """A file-name-safe tag of the teacher, data and block size (the cache is checked by fingerprints anyway)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(opts.teacher).name}-{Path(opts.data).name}-{opts.block_size}")


def _machine(opts: ShrinkOptions) -> str:
    """Where the run trained: the CPU (and GPU), cores and the training precision."""
    import torch

    from ..hardware import best_device, fast_dtype
    from ..workbook.report import machine_line

    cpu = machine_line().removeprefix("Machine: ").split(";")[0]
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    bf16 = opts.bf16 == "on" or (opts.bf16 == "auto" and fast_dtype(best_device()) == torch.bfloat16)
    return f"{cpu}{gpu}; trained in {'bf16 mixed precision' if bf16 else 'float32'}"


def _finish(opts: ShrinkOptions, teacher, student, tokenizer, result, arch: dict, seconds: float, say) -> Path:
    """Evaluate beside the teacher, save the checkpoint with its recipe and model card, drop the checkpoints."""
    from ..data import REAL_TEXT
    from ..distill import save_distilled
    from ..io import write_text_atomically
    from .card import evaluate_student, student_card

    say("evaluating: corpus and real-text perplexity, speed, samples")
    corpus, real = (_heldout(tokenizer, source, opts.eval_windows, teacher.config) for source in (opts.data, REAL_TEXT))
    ev = evaluate_student(teacher, student, result.student, tokenizer, corpus, real, speed_repeats=opts.speed_repeats)
    curve = [{"tokens_seen": h["tokens_seen"], "realtext_ppl": h["eval_ppl"]} for h in result.history if "eval_ppl" in h]
    metrics = {**ev.metrics(), "tokens_seen": result.tokens_seen, "train_seconds": round(seconds)}
    say(f"real-text perplexity {ev.realtext_ppl['student']:.2f} ({ev.ratio():.2f}x the teacher's), corpus "
        f"{ev.corpus_ppl['student']:.2f} ({ev.ratio('corpus'):.2f}x); decode {ev.speedup:.2f}x the teacher's speed")
    options = {k: str(v) for k, v in asdict(opts).items()}
    out = save_distilled(result, tokenizer, opts.out, parent=opts.teacher,
                         recipe_extra={"command": "shrink", "options": options, "architecture": arch,
                                       "metrics": metrics, "realtext_curve": curve, "machine": _machine(opts),
                                       "generations": ev.generations})
    recipe = {"kind": opts.kind, "architecture": ", ".join(f"{k} {arch[k]}" for k in (
        "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")),
        "distillation": f"forward KL{f' from the cached top-{opts.cache_top_k}' if opts.cache_top_k else ''}, "
                        f"lr {opts.learning_rate}, cosine, batch {opts.batch_size}x{opts.grad_accum}x{opts.block_size}",
        "tokens": f"{result.tokens_seen:,} of `{opts.data}`", "time": f"{seconds / 60:.0f} min, {_machine(opts)}"}
    write_text_atomically(out / "README.md", student_card(Path(opts.out).name, opts.teacher, recipe, ev))
    shutil.rmtree(Path(opts.out).parent / f".{Path(opts.out).name}.checkpoints", ignore_errors=True)
    say(f"saved {out} (stock checkpoint, recipe.json, README.md model card)")
    return out


def _parser() -> argparse.ArgumentParser:
    d = ShrinkOptions(out=Path("."))
    ap = argparse.ArgumentParser(prog="python -m helpers shrink", description="Prune a teacher to a target size and "
                                 "heal it by distillation; writes a stock HF checkpoint with recipe.json and a model card.")
    ap.add_argument("--out", type=Path, required=True, help="folder for the student (written atomically)")
    ap.add_argument("--teacher", default=d.teacher, help="embedded alias, a local folder or a Hub id (default %(default)s)")
    ap.add_argument("--target-params", default=d.target_params,
                    help="a fraction of the teacher's parameters (0.6) or a count (80M, 1.5B) (default %(default)s)")
    ap.add_argument("--kind", default=d.kind, choices=KINDS, help="what is pruned (default %(default)s)")
    ap.add_argument("--tokens", type=int, default=d.tokens, help="distillation tokens in total (default %(default)s)")
    ap.add_argument("--data", default=d.data, help="'embedded', a .txt/.jsonl file or folder, a saved datasets folder "
                    "or a datasets Hub name; a local source holds out every 5th document (default %(default)s)")
    for name, kind, what in (("block-size", int, "tokens per training sequence"), ("batch-size", int, "sequences per "
                             "device per micro-batch"), ("grad-accum", int, "micro-batches per optimizer step"),
                             ("learning-rate", float, "peak learning rate (AdamW, cosine)"),
                             ("calibration-samples", int, "samples for the importance estimate"),
                             ("eval-windows", int, "held-out windows for the final perplexity"),
                             ("seed", int, "data order, initialisation, calibration draw"),
                             ("save-steps", int, "checkpoint every n steps (0: none)")):
        ap.add_argument(f"--{name}", type=kind, default=getattr(d, name.replace("-", "_")), help=f"{what} (default %(default)s)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of an interrupted run")
    ap.add_argument("--bf16", default=d.bf16, choices=("auto", "on", "off"), help="mixed precision (default %(default)s)")
    ap.add_argument("--cache-top-k", type=int, default=d.cache_top_k, help="distil from the teacher's top-k log-probs, "
                    "computed once over the training blocks and kept beside --out (0: run the teacher every step; "
                    "default %(default)s)")
    ap.add_argument("--curve-points", type=int, default=d.curve_points, help="real-text perplexity this many times "
                    "during training, for a quality-against-tokens curve (default %(default)s)")
    ap.add_argument("--speed-repeats", type=int, default=d.speed_repeats, help="interleaved rounds of the final "
                    "teacher-vs-student speed test (default %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = ShrinkOptions(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    try:
        check_options(opts)
    except (ValueError, FileNotFoundError) as err:
        print(f"python -m helpers shrink: error: {err}", file=sys.stderr, flush=True)
        return 2
    shrink(opts)
    return 0
