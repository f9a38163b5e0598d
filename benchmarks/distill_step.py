"""How much does the distillation trainer add on top of the unavoidable work?

Times one full optimizer step of ``helpers.distill`` (the Trainer's real loop: teacher forward, student forward
and backward, KD loss, gradient clipping, AdamW step, logging bookkeeping) against its parts measured alone on
the same batch: a teacher forward (same precision as in the trainer) plus a student forward+backward with the
plain CE loss. The parts are timed right after each trainer step (interleaved, so a drifting machine load hits
both alike); the first ``--warmup`` rounds are dropped. Prints medians, the ratio (target <= 1.15), the KD loss
alone for reference, and peak memory.

    python benchmarks/distill_step.py                  # notebook 04's laptop batch: 1 x 512 tokens
    python benchmarks/distill_step.py --batch-size 4   # a larger batch: the optimizer weighs less
    python benchmarks/distill_step.py --drop-layers 15 --hidden-loss cosine --repeats 9
    python benchmarks/distill_step.py --threads 1      # on a busy shared CPU, 2 threads can be far slower

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

import torch
from transformers import TrainerCallback

from helpers import architecture
from helpers.distill import DistillConfig, distill
from helpers.distill.run import _teacher_for_training  # the benchmark times the engine's own teacher copy
from helpers.hardware import best_device, fast_dtype
from helpers.distill.losses import forward_kl
from helpers.models import load_model


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="teacher: embedded alias, folder or Hub id")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per step (notebook 04 laptop: 1)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (notebook 04 laptop: 512)")
    parser.add_argument("--drop-layers", type=int, default=10, help="student = teacher minus its last N layers")
    parser.add_argument("--loss", default="forward_kl", choices=["forward_kl", "reverse_kl", "jsd"])
    parser.add_argument("--hidden-loss", default=None, choices=[None, "cosine", "mse", "nmse"])
    parser.add_argument("--bf16", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--warmup", type=int, default=2, help="first rounds dropped (allocator, caches)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = best_device()
    teacher, _ = load_model(args.model, device=device)
    student = drop_last_layers(teacher, args.drop_layers)
    bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    mixed = fast_dtype(device) if bf16 == "auto" else (torch.bfloat16 if bf16 else torch.float32)
    autocast = lambda: torch.autocast(device.type, dtype=mixed, enabled=mixed != torch.float32)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    n_blocks = args.batch_size * (args.warmup + args.repeats)
    blocks = torch.randint(0, teacher.config.vocab_size, (n_blocks, args.seq_len), generator=g)
    batch = blocks[: args.batch_size].to(device)
    print(f"device {device}, mixed precision {mixed}, threads {torch.get_num_threads()}, batch "
          f"{args.batch_size} x {args.seq_len}, teacher {teacher.config.num_hidden_layers} layers, student "
          f"{student.config.num_hidden_layers} layers, loss {args.loss}, hidden loss {args.hidden_loss}")

    # --- the parts, alone: teacher forward (as the trainer runs it) and student forward + backward with CE
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

    # --- the trainer's real step, with the parts timed alone after each step
    timer = StepTimer({"teacher fwd": teacher_forward, "student fwd+bwd": student_forward_backward,
                       "KD loss fwd+bwd": kd_loss_alone})
    config = DistillConfig(loss=args.loss, hidden_loss=args.hidden_loss, max_steps=args.warmup + args.repeats,
                           batch_size=args.batch_size, logging_steps=1, disable_tqdm=True, bf16=bf16, seed=0)
    distill(student, teacher, blocks, config, callbacks=[timer])
    med = {name: statistics.median(t[args.warmup:]) for name, t in timer.times.items()}
    parts = med["teacher fwd"] + med["student fwd+bwd"]
    for name, value in med.items():
        print(f"  {name:>18}: {value * 1000:8.1f} ms (median of {args.repeats})")
    print(f"  {'parts (sum)':>18}: {parts * 1000:8.1f} ms")
    print(f"ratio full step / (teacher fwd + student fwd+bwd) = {med['step'] / parts:.3f}  (target <= 1.15)")
    print(peak_memory_mib())


if __name__ == "__main__":
    main()
