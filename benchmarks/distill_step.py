"""How much does the distillation trainer add on top of the unavoidable work?

Times one full optimizer step of ``helpers.distill`` (the Trainer's real loop: teacher forward, student forward
and backward, KD loss, gradient clipping, AdamW step, logging bookkeeping) against its parts measured alone on
the same batch: a teacher forward (same precision as in the trainer) plus a student forward+backward with the
plain CE loss. The parts are timed right after each trainer step (interleaved, so a drifting machine load hits
both alike); the first ``--warmup`` rounds are dropped. Prints medians, the ratio (target <= 1.10), the KD loss
alone for reference, and peak memory.

``--cache`` adds a second run that distils from a teacher-logit cache (``helpers.distill.build_logit_cache``,
top ``--top-k``; built before the run, not timed) with no teacher at all, and times its step against a plain CE
step on the same batch (student forward+backward with CE, gradient clipping and the engine's own optimizer step,
timed alone after each trainer step): ratio "KD step from cached teacher logits / CE step" (target <= 1.05). Both
ratios are printed for bf16 on and off (off = ``DistillConfig(bf16=False)``, what ``WORKBOOK_BF16=0`` gives),
unless ``--bf16 on|off`` picks one.

    python benchmarks/distill_step.py                  # notebook 04's laptop batch: 1 x 512 tokens
    python benchmarks/distill_step.py --batch-size 4   # a larger batch: the optimizer weighs less
    python benchmarks/distill_step.py --drop-layers 15 --hidden-loss cosine --repeats 9
    python benchmarks/distill_step.py --threads 1      # on a busy shared CPU, 2 threads can be far slower
    python benchmarks/distill_step.py --cache --repeats 3 --seq-len 128   # both ratios, bf16 on and off (quick)

The student is the embedded teacher with its last ``--drop-layers`` layers removed (a depth-pruned student).
The default batch is the one notebook 04 trains with at the laptop scale. The AdamW step costs the same whatever
the batch, so on smaller batches it is a larger share of the step (the run prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import statistics
import time
from typing import Callable

import tempfile

import torch
from transformers import Trainer, TrainerCallback

from helpers import architecture
from helpers.distill import DistillConfig, build_logit_cache, distill
from helpers.distill.losses import forward_kl, topk_cached_kl
from helpers.distill.run import _teacher_for_training, _training_args  # the engine's own teacher copy and optimizer
from helpers.hardware import best_device, fast_dtype
from helpers.models import load_model

TARGETS = {"teacher": 1.10, "cache": 1.05}  # distill step / its parts; cached KD step / CE step


class StepTimer(TrainerCallback):
    """Times each optimizer step (``on_step_begin`` -> ``on_step_end``, optimizer included), then times the parts
    alone right after it, so steps and parts are interleaved and see the same machine load."""

    def __init__(self, parts: dict[str, Callable[[], None]]) -> None:
        self.parts = parts
        self.times: dict[str, list[float]] = {"step": [], "  of which optimizer": [], **{name: [] for name in parts}}
        self._start = self._optimizer_start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        _sync()
        self._start = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        _sync()
        self._optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        _sync()
        self.times["  of which optimizer"].append(time.perf_counter() - self._optimizer_start)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        _sync()
        self.times["step"].append(time.perf_counter() - self._start)
        for name, fn in self.parts.items():
            self.times[name].append(timed(fn))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], None]) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def drop_last_layers(model: torch.nn.Module, n: int) -> torch.nn.Module:
    """A deep copy of ``model`` without its last ``n`` decoder layers (config and ``layer_idx`` updated)."""
    student = copy.deepcopy(model)
    keep = len(architecture.layers(student)) - n
    architecture.base(student).layers = torch.nn.ModuleList(list(architecture.layers(student))[:keep])
    for i, layer in enumerate(architecture.layers(student)):
        architecture.attention(layer).layer_idx = i
    student.config.num_hidden_layers = keep
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = student.config.layer_types[:keep]
    return student


def peak_memory_mib() -> str:
    if torch.cuda.is_available():
        return f"GPU max allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return f"CPU peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (whole process)"


def _autocast(device: torch.device, mixed: torch.dtype) -> Callable[[], contextlib.AbstractContextManager]:
    return lambda: torch.autocast(device.type, dtype=mixed, enabled=mixed != torch.float32)


def _report(timer: StepTimer, warmup: int, repeats: int, denominator: list[str]) -> float:
    """Print the medians; return the step's median over the sum of the ``denominator`` parts' medians."""
    med = {name: statistics.median(t[warmup:]) for name, t in timer.times.items()}
    for name, value in med.items():
        print(f"  {name:>24}: {value * 1000:8.1f} ms (median of {repeats})")
    parts = sum(med[name] for name in denominator)
    print(f"  {' + '.join(denominator):>24}: {parts * 1000:8.1f} ms")
    return med["step"] / parts


def time_teacher_run(teacher, student, blocks, args, bf16: bool | str) -> float:  # noqa: ANN001
    """The trainer's step with the teacher against teacher forward + student forward+backward (CE)."""
    device = teacher.device
    mixed = fast_dtype(device) if bf16 == "auto" else (torch.bfloat16 if bf16 else torch.float32)
    autocast, batch = _autocast(device, mixed), blocks[: args.batch_size].to(device)
    frozen = _teacher_for_training(teacher, device, mixed if mixed != torch.float32 else None)
    part_student = copy.deepcopy(student).float().train()
    teacher_ctx = contextlib.nullcontext if next(frozen.parameters()).dtype != torch.float32 else autocast

    def teacher_forward() -> None:  # as DistillTrainer._teacher_forward runs it
        with torch.no_grad(), teacher_ctx():
            frozen(input_ids=batch, use_cache=False)

    def student_forward_backward() -> None:
        with autocast():
            loss = part_student(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        part_student.zero_grad(set_to_none=True)

    logits = torch.randn(args.batch_size, args.seq_len, teacher.config.vocab_size, device=device, requires_grad=True)
    target = torch.randn_like(logits).bfloat16()

    def kd_loss_alone() -> None:
        forward_kl(logits, target).backward()
        logits.grad = None

    timer = StepTimer({"teacher fwd": teacher_forward, "student fwd+bwd": student_forward_backward,
                       "KD loss fwd+bwd": kd_loss_alone})
    config = DistillConfig(loss=args.loss, hidden_loss=args.hidden_loss, max_steps=args.warmup + args.repeats,
                           batch_size=args.batch_size, logging_steps=1, disable_tqdm=True, bf16=bf16, seed=0)
    print(f"-- distillation with the teacher, mixed precision {mixed}")
    distill(student, teacher, blocks, config, callbacks=[timer])
    return _report(timer, args.warmup, args.repeats, ["teacher fwd", "student fwd+bwd"])


def time_cached_run(teacher, student, blocks, args, bf16: bool | str) -> float:  # noqa: ANN001
    """The trainer's step from a teacher-logit cache (no teacher) against a plain CE step on the same batch."""
    device = teacher.device
    mixed = fast_dtype(device) if bf16 == "auto" else (torch.bfloat16 if bf16 else torch.float32)
    autocast, batch = _autocast(device, mixed), blocks[: args.batch_size].to(device)
    cache = build_logit_cache(teacher, blocks, top_k=args.top_k, batch_size=args.batch_size, progress=False,
                              use_autocast=mixed != torch.float32)
    config = DistillConfig(max_steps=args.warmup + args.repeats, batch_size=args.batch_size, logging_steps=1,
                           disable_tqdm=True, bf16=bf16, seed=0)
    part_student = copy.deepcopy(student).float().train()
    with tempfile.TemporaryDirectory() as tmp:  # the engine's own optimizer class and settings
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(_training_args(config, tmp, device, mixed, False))
    optimizer = optimizer_cls(part_student.parameters(), **kwargs)

    def ce_step() -> None:
        with autocast():
            loss = part_student(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(part_student.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    logits = torch.randn(args.batch_size, args.seq_len, teacher.config.vocab_size, device=device, requires_grad=True)
    rows = {k: v[: args.batch_size].to(device) for k, v in cache.items()}

    def cached_kd_loss_alone() -> None:
        topk_cached_kl(logits, rows["topk_logprobs"], rows["topk_indices"]).backward()
        logits.grad = None

    timer = StepTimer({"CE step": ce_step, "cached KD loss fwd+bwd": cached_kd_loss_alone})
    print(f"-- distillation from the teacher-logit cache (top {args.top_k}, no teacher), mixed precision {mixed}")
    distill(student, None, blocks, config, callbacks=[timer], teacher_logits=cache)
    return _report(timer, args.warmup, args.repeats, ["CE step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="teacher: embedded alias, folder or Hub id")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per step (notebook 04 laptop: 1)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (notebook 04 laptop: 512)")
    parser.add_argument("--drop-layers", type=int, default=10, help="student = teacher minus its last N layers")
    parser.add_argument("--loss", default="forward_kl", choices=["forward_kl", "reverse_kl", "jsd"])
    parser.add_argument("--hidden-loss", default=None, choices=[None, "cosine", "mse", "nmse"])
    parser.add_argument("--bf16", default="auto", choices=["auto", "on", "off"],
                        help="with --cache, 'auto' means both on and off")
    parser.add_argument("--cache", action="store_true", help="also time KD from a teacher-logit cache vs a CE step")
    parser.add_argument("--top-k", type=int, default=64, help="tokens kept per position in the cache (--cache)")
    parser.add_argument("--warmup", type=int, default=2, help="first rounds dropped (allocator, caches)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = best_device()
    teacher, _ = load_model(args.model, device=device)
    student = drop_last_layers(teacher, args.drop_layers)
    g = torch.Generator().manual_seed(0)
    n_blocks = args.batch_size * (args.warmup + args.repeats)
    blocks = torch.randint(0, teacher.config.vocab_size, (n_blocks, args.seq_len), generator=g)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size} x {args.seq_len}, teacher "
          f"{teacher.config.num_hidden_layers} layers, student {student.config.num_hidden_layers} layers, loss "
          f"{args.loss}, hidden loss {args.hidden_loss}")
    chosen = {"auto": "auto", "on": True, "off": False}[args.bf16]
    settings = [True, False] if args.cache and chosen == "auto" else [chosen]
    rows = []
    for bf16 in settings:
        ratios = [time_teacher_run(teacher, student, blocks, args, bf16)]
        if args.cache:
            ratios.append(time_cached_run(teacher, student, blocks, args, bf16))
        rows.append((bf16, ratios))
    print(f"\n{'bf16':>5}  {'distill step / (teacher fwd + student fwd+bwd)':>48}"
          + (f"  {'KD step from cached teacher logits / CE step':>46}" if args.cache else ""))
    for bf16, ratios in rows:
        cells = [f"{ratios[0]:.3f} (target <= {TARGETS['teacher']:.2f})"]
        if args.cache:
            cells.append(f"{ratios[1]:.3f} (target <= {TARGETS['cache']:.2f})")
        print(f"{str(bf16):>5}  {cells[0]:>48}" + (f"  {cells[1]:>46}" if args.cache else ""))
    print(peak_memory_mib())


if __name__ == "__main__":
    main()
