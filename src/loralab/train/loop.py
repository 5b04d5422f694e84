"""The training loop: full fine-tuning, LoRA and DoRA share it.

AdamW with linear warm-up then linear decay to zero, gradient clipping and
accumulation, evaluation on the validation split after every epoch, the best epoch
kept (accuracy for classification, loss for causal LM) and tested at the end.
Checkpoints (`checkpoint.py`) let a killed run resume to bit-identical weights.
Under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU): every
global batch of ``batch_size`` examples is split evenly over the processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

import loralab as ll
from loralab import data as datasets
from loralab import models
from loralab.errors import TrainingError
from loralab.train.batching import collate, encode, epoch_order
from loralab.train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from loralab.train.config import TrainConfig
from loralab.train.evaluate import evaluate


def init_distributed() -> tuple[int, int]:
    """(rank, world size); starts a gloo process group when launched by torchrun with > 1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def prepare_model(model: nn.Module, cfg: TrainConfig, task: str) -> tuple[nn.Module, Optional[ll.LoraConfig]]:
    """(the module to train, its LoRA config): all weights (full), a LoRA/DoRA adapter plus the
    task head, or the model inside a random subspace (did/said, head included)."""
    if cfg.method == "full":
        model.requires_grad_(True)
        return model, None
    if cfg.method in ("did", "said"):
        from loralab.subspace.intrinsic import IntrinsicModel

        wrapped = IntrinsicModel(model, cfg.d, cfg.projection, said=cfg.method == "said", targets=cfg.target_spec(),
                                 seed=cfg.seed)
        return wrapped, None
    heads = models.head_names(model) if task == "classification" else []
    lora = ll.LoraConfig(
        r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, targets=cfg.target_spec(), rslora=cfg.rslora,
        dora=cfg.method == "dora", modules_to_save=heads,
    )
    ll.inject(model, lora)
    return model, lora


def lr_schedule(total_steps: int, warmup_steps: int):
    """Multiplier of the peak lr at step t: t/warmup while warming up, then linear decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def is_better(metrics: dict, best: Optional[float], task: str) -> bool:
    value = metrics["accuracy"] if task == "classification" else -metrics["loss"]
    return best is None or value > best


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MetricsLog:
    """metrics.jsonl: one JSON object per line; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: Optional[int]):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif enabled:
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run one fine-tuning job; returns (and writes to ``<out>/result.json``) its result."""
    rank, world = init_distributed()
    if cfg.threads or world > 1:
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    if cfg.batch_size % world:
        raise TrainingError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes.")
    main = rank == 0
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    torch.manual_seed(cfg.seed)
    split = {s: datasets.load(cfg.data, s, cfg.seed, cfg.max_train if s == "train" else cfg.max_eval)
             for s in datasets.SPLITS}
    task, labels = split["train"].task, split["train"].labels
    model, tokenizer = models.load(cfg.model, task, num_labels=len(labels) or None)
    base_model = model
    model, lora = prepare_model(model, cfg, task)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable, total = ll.trainable_parameters(model)
    rows = {s: encode(d, tokenizer, cfg.max_length) for s, d in split.items()}
    pad_id = tokenizer.pad_token_id

    n_train = len(rows["train"])
    micro_per_epoch = n_train // cfg.batch_size if world > 1 else math.ceil(n_train / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW([p for _, p in named], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(total_steps, round(cfg.warmup * total_steps)))
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    state = {"step": 0, "epoch": 0, "micro": 0, "best_metric": None, "best_epoch": None, "history": [], "elapsed": 0.0}
    best: Optional[dict[str, torch.Tensor]] = None
    resumed_from = None
    if cfg.resume and has_checkpoint(ckpt_dir):
        state, best = load_checkpoint(ckpt_dir, named, optimizer, scheduler)
        resumed_from = state["step"]
    elif main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    log = MetricsLog(out / "metrics.jsonl", main, resumed_from)

    prior_time = state.get("elapsed", 0.0)  # wall time spent before a resume

    def checkpoint() -> None:
        if main:
            record = {**state, "elapsed": prior_time + time.time() - started, "config": cfg.to_dict()}
            save_checkpoint(ckpt_dir, named, optimizer, scheduler, best, record)

    bar = tqdm(total=total_steps, initial=state["step"], desc=f"{cfg.method} {cfg.model}/{cfg.data}",
               disable=not (progress and main), dynamic_ncols=True)
    running = 0.0
    for epoch in range(state["epoch"], cfg.epochs):
        order = epoch_order(n_train, cfg.seed, epoch)
        micro = [order[i : i + cfg.batch_size] for i in range(0, micro_per_epoch * cfg.batch_size, cfg.batch_size)]
        net.train()
        for index in range(state["micro"] if epoch == state["epoch"] else 0, len(micro)):
            group_start = index - index % cfg.grad_accum
            group_size = min(cfg.grad_accum, len(micro) - group_start)
            last_of_group = index == group_start + group_size - 1
            batch = collate([rows["train"][i] for i in micro[index][rank::world]], pad_id)
            sync = contextlib.nullcontext() if world == 1 or last_of_group else net.no_sync()
            with sync:
                loss = net(**batch).loss
                value = loss.detach().clone()
                if world > 1:
                    dist.all_reduce(value, op=dist.ReduceOp.AVG)
                if not torch.isfinite(value):
                    raise non_finite_loss(value.item(), state["step"] + 1, epoch + 1, ckpt_dir, cfg)
                (loss / group_size).backward()
            running += value.item() / group_size
            if not last_of_group:
                continue
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["micro"] = index + 1
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if state["step"] % cfg.log_every == 0:
                log.write({"type": "train", "step": state["step"], "epoch": epoch + 1, "loss": running,
                           "lr": scheduler.get_last_lr()[0]})
            running = 0.0
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                checkpoint()
        metrics = evaluate(model, rows["validation"], task, len(labels), pad_id, cfg.eval_batch_size,
                           desc="validation", progress=progress and main)
        record = {"type": "eval", "split": "validation", "step": state["step"], "epoch": epoch + 1, **metrics}
        state["history"].append(record)
        log.write(record)
        if is_better(metrics, state["best_metric"], task):
            state["best_metric"] = metrics["accuracy"] if task == "classification" else -metrics["loss"]
            state["best_epoch"] = epoch + 1
            best = {n: p.detach().clone() for n, p in named}
        state["epoch"], state["micro"] = epoch + 1, 0
        checkpoint()
    bar.close()

    if best is not None:
        with torch.no_grad():
            for name, param in named:
                param.copy_(best[name])
    best_record = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    final = {
        "validation": {k: v for k, v in best_record.items() if k not in ("type", "split", "step", "epoch")},
        "test": evaluate(model, rows["test"], task, len(labels), pad_id, cfg.eval_batch_size, desc="test",
                         progress=progress and main),
    }
    result = {
        "method": cfg.method, "model": cfg.model, "data": cfg.data, "task": task, "labels": labels,
        "config": cfg.to_dict(), "lora": lora.to_dict() if lora else None,
        "subspace": {"d": cfg.d, "projection": cfg.projection, "full_dim": model.full_dim}
        if model is not base_model else None,
        "trainable_params": trainable, "total_params": total,
        "train_examples": n_train, "steps": state["step"], "best_epoch": state["best_epoch"],
        "validation": final["validation"], "test": final["test"], "history": state["history"],
        "wall_time_s": prior_time + time.time() - started,
        "peak_memory_mb": peak_memory_mb(), "world_size": world, "resumed_from_step": resumed_from,
        "torch": torch.__version__,
    }
    if main:
        save_trained(model, base_model, lora, tokenizer, out)
        log.write({"type": "eval", "split": "test", "step": state["step"], **final["test"]})
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    if world > 1:
        dist.barrier()
    return result


def non_finite_loss(value: float, step: int, epoch: int, ckpt_dir: Path, cfg: TrainConfig) -> TrainingError:
    """The error for a nan/inf loss: where the last good checkpoint is and what to change."""
    if has_checkpoint(ckpt_dir):
        saved = json.loads((ckpt_dir / "checkpoint.json").read_text())["step"]
        where = f"the last good checkpoint is {ckpt_dir} (step {saved})"
    else:
        where = "no checkpoint was written yet"
    return TrainingError(f"training loss is {value} at step {step} (epoch {epoch}); stopped. {where}. "
                         f"Lower --lr (now {cfg.lr}) or --max-grad-norm, then resume with --resume.")


def save_trained(model: nn.Module, base_model: nn.Module, lora, tokenizer, out: Path) -> None:
    """The trained result: a PEFT adapter, the subspace (θ_d, λ, the new head's θ0), or the whole model."""
    if lora is not None:
        ll.save_adapter(model, out / "adapter")
    elif model is not base_model:
        heads = [n for n, _ in base_model.named_parameters() if n.split(".")[0] in models.head_names(base_model)]
        model.save(out / "intrinsic", extra_theta0=heads)
    else:
        model.save_pretrained(out / "model", safe_serialization=True)
        tokenizer.save_pretrained(out / "model")
