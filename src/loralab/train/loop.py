"""The training loop, one `Trainer` for every method, in named steps with hooks.

AdamW with linear warm-up then linear decay to zero, gradient clipping and accumulation,
evaluation on the validation split after every epoch, the best epoch kept (accuracy for
classification, loss for causal LM) and tested at the end. What is trained comes from the
method (`loralab.methods`); what is measured along the way comes from callbacks
(`loralab.train.callbacks`). Checkpoints (`checkpoint.py`) let a killed run resume to
bit-identical weights. Under ``torchrun`` it trains with DistributedDataParallel (gloo on
CPU): every global batch of ``batch_size`` examples is split evenly over the processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

import loralab as ll
from loralab import data as datasets
from loralab import models
from loralab.errors import TrainingError
from loralab.io.atomic import atomic_write_json
from loralab.methods import get_method
from loralab.progress import progress
from loralab.train import run_dir
from loralab.train.batching import collate, encode, epoch_order
from loralab.train.callbacks import Callback, standard_callbacks
from loralab.train.checkpoint import STATE_FILE, has_checkpoint, load_checkpoint, save_checkpoint
from loralab.train.config import TrainConfig
from loralab.train.evaluate import autocast, evaluate


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs finished
    micro: int = 0  # micro-batches done in the current epoch
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    history: list = field(default_factory=list)  # validation records, one per epoch
    elapsed: float = 0.0  # wall seconds before the last resume


def lr_schedule(total_steps: int, warmup_steps: int, shape: str = "linear"):
    """Multiplier of the peak lr at step t: (t + 1)/warmup while warming up; then, with
    p = (t − warmup)/(total − warmup), 1 − p (linear), (1 + cos πp)/2 (cosine) or 1 (constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if shape == "constant":
            return 1.0
        if shape == "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))  # 1 − p

    return factor


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


class Trainer:
    """One fine-tuning run of ``cfg``: call `run()`. Hooks: ``callbacks`` (see `Callback`)."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Callback] = (), progress: bool = True):
        self.cfg, self.method, self.show_progress = cfg, get_method(cfg.method), progress
        self.callbacks = [*callbacks, *standard_callbacks(cfg)]
        self.state, self.best = TrainState(), None
        self.resumed_from: Optional[int] = None

    # ----- the run, step by step ---------------------------------------------------------------
    def run(self) -> dict:
        self.setup_processes()
        self.out = run_dir.check_out(self.cfg)
        finished = run_dir.finished_result(self.out) if self.cfg.resume else None
        if finished is not None:  # --resume of a run that ended: its result stands, nothing is rewritten
            if self.main:
                print(f"loralab train: {self.out} had already finished; nothing to resume, nothing was changed.",
                      file=sys.stderr)
            return finished
        self.load_data_and_model()  # data, model, targets and lengths are checked before --out changes at all:
        self.build_optimizer()      # a refused --overwrite run leaves the old run as it was
        self.barrier()
        created, held = run_dir.create_out(self.cfg, self.out) if self.main else (False, None)
        try:
            self.restore()
            self.emit("on_train_begin")
            self.run_epochs()
            return self.finish()
        except BaseException:
            if self.main:
                run_dir.discard_if_empty(self.out, created)
            raise
        finally:
            run_dir.release(held)

    def setup_processes(self) -> None:
        """Rank and world size; a gloo process group when launched by torchrun with > 1 process."""
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.main = self.rank == 0
        if self.cfg.threads or self.world > 1:
            torch.set_num_threads(self.cfg.threads or max(1, (os.cpu_count() or 1) // self.world))
        if self.cfg.batch_size % self.world:
            raise TrainingError(f"--batch-size {self.cfg.batch_size} must be divisible by the {self.world} processes.")

    def load_data_and_model(self) -> None:
        """Seeded splits, the base model, the method's trainable module and the encoded rows."""
        cfg = self.cfg
        self.started = time.time()
        torch.manual_seed(cfg.seed)
        split = {s: datasets.load(cfg.data, s, cfg.seed, cfg.max_train if s == "train" else cfg.max_eval)
                 for s in datasets.SPLITS}
        self.task, self.labels = split["train"].task, split["train"].labels
        base, self.tokenizer = models.load(cfg.model, self.task, num_labels=len(self.labels) or None,
                                           attn_implementation=models.attention_for(cfg.precision))
        models.check_max_length(base, self.tokenizer, cfg.max_length, cfg.model)
        if self.labels:  # a saved model (full fine-tuning, `merge`) names its classes, not LABEL_0, LABEL_1
            base.config.id2label = dict(enumerate(self.labels))
            base.config.label2id = {name: i for i, name in enumerate(self.labels)}
        self.attention = getattr(base.config, "_attn_implementation", None)
        if cfg.gradient_checkpointing:
            models.enable_gradient_checkpointing(base, cfg.model)
        self.model = self.method.prepare(base, cfg, self.task)
        self.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.trainable, self.total = ll.trainable_parameters(self.model)
        self.rows = {s: encode(d, self.tokenizer, cfg.max_length) for s, d in split.items()}
        self.pad_id = self.tokenizer.pad_token_id
        self.net = nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model

    def build_optimizer(self) -> None:
        cfg = self.cfg
        self.n_train = len(self.rows["train"])
        per_epoch = self.n_train // cfg.batch_size if self.world > 1 else math.ceil(self.n_train / cfg.batch_size)
        self.micro_per_epoch = per_epoch
        self.total_steps = math.ceil(per_epoch / cfg.grad_accum) * cfg.epochs
        self.optimizer = torch.optim.AdamW([p for _, p in self.named], lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup_steps = round(cfg.warmup * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(self.total_steps, warmup_steps,
                                                                                      self.cfg.scheduler))

    def restore(self) -> None:
        """Load the checkpoint on --resume; otherwise record the config (absolute paths) in the run."""
        if self.cfg.resume:
            record, self.best = load_checkpoint(self.out / "checkpoint", self.named, self.optimizer, self.scheduler)
            self.state = TrainState(**{k: record[k] for k in asdict(TrainState())})
            self.resumed_from = self.state.step
        elif self.main:
            atomic_write_json(self.out / run_dir.CONFIG_FILE, self.cfg.with_absolute_paths().to_dict())
        self.log = MetricsLog(self.out / "metrics.jsonl", self.main, self.resumed_from)

    def run_epochs(self) -> None:
        self.bar = progress(self.total_steps, f"{self.cfg.method} {self.cfg.model}/{self.cfg.data}",
                            enabled=self.show_progress and self.main, initial=self.state.step)
        for epoch in range(self.state.epoch, self.cfg.epochs):
            if self.stopped_early():
                break
            self.train_epoch(epoch)
            self.validate(epoch)
            self.state.epoch, self.state.micro = epoch + 1, 0
            self.checkpoint()
        self.bar.close()

    def stopped_early(self) -> bool:
        """--patience N: the last N validations did not beat the best one (read from the history, so a
        resumed run stops where the uninterrupted one would)."""
        patience, best = self.cfg.patience, self.state.best_epoch
        return bool(patience and best is not None and self.state.epoch - best >= patience)

    def train_epoch(self, epoch: int) -> None:
        """Micro-batches of this epoch's fixed order, from where a resumed run stopped."""
        cfg = self.cfg
        lengths = [len(r["input_ids"]) for r in self.rows["train"]] if cfg.group_by_length else None
        order = epoch_order(self.n_train, cfg.seed, epoch, lengths, cfg.batch_size)
        micro = [order[i : i + cfg.batch_size] for i in range(0, self.micro_per_epoch * cfg.batch_size, cfg.batch_size)]
        self.net.train()
        running = 0.0
        for index in range(self.state.micro if epoch == self.state.epoch else 0, len(micro)):
            group_start = index - index % cfg.grad_accum
            group_size = min(cfg.grad_accum, len(micro) - group_start)
            last_of_group = index == group_start + group_size - 1
            running += self.forward_backward(micro[index], group_size, last_of_group, epoch) / group_size
            if last_of_group:
                self.optimizer_step(epoch, index, running)
                running = 0.0

    def forward_backward(self, batch_ids: list[int], group_size: int, sync: bool, epoch: int) -> float:
        """Loss of one micro-batch (this process's share), backward scaled for accumulation."""
        batch = collate([self.rows["train"][i] for i in batch_ids[self.rank :: self.world]], self.pad_id)
        no_sync = contextlib.nullcontext() if self.world == 1 or sync else self.net.no_sync()
        with no_sync:
            with autocast(self.cfg.precision):
                loss = self.net(**batch).loss
            value = loss.detach().float().clone()
            if self.world > 1:
                dist.all_reduce(value, op=dist.ReduceOp.AVG)
            if not torch.isfinite(value):
                raise self.non_finite_loss(value.item(), epoch)
            (loss / group_size).backward()
        return value.item()

    def optimizer_step(self, epoch: int, index: int, loss: float) -> None:
        cfg, state = self.cfg, self.state
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.named], cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.micro = index + 1
        lr = self.scheduler.get_last_lr()[0]
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if state.step % cfg.log_every == 0:
            self.log.write({"type": "train", "step": state.step, "epoch": epoch + 1, "loss": loss, "lr": lr})
        self.emit("on_step", loss=loss)
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            self.checkpoint()

    def validate(self, epoch: int) -> None:
        metrics = self.evaluate("validation")
        record = {"type": "eval", "split": "validation", "step": self.state.step, "epoch": epoch + 1, **metrics}
        self.state.history.append(record)
        self.log.write(record)
        value = metrics["accuracy"] if self.task == "classification" else -metrics["loss"]
        if self.state.best_metric is None or value > self.state.best_metric:
            self.state.best_metric, self.state.best_epoch = value, epoch + 1
            self.best = {n: p.detach().clone() for n, p in self.named}
        self.emit("on_eval", record=record)

    def evaluate(self, split: str) -> dict:
        with autocast(self.cfg.precision):
            return evaluate(self.model, self.rows[split], self.task, len(self.labels), self.pad_id,
                            self.cfg.eval_batch_size, desc=split, progress=self.show_progress and self.main)

    def checkpoint(self) -> None:
        if not self.main:
            return
        record = {**asdict(self.state), "elapsed": self.state.elapsed + time.time() - self.started,
                  "config": self.cfg.to_dict()}
        path = save_checkpoint(self.out / "checkpoint", self.named, self.optimizer, self.scheduler, self.best, record)
        self.emit("on_checkpoint", path=path)

    def finish(self) -> dict:
        """Restore the best epoch's parameters, test them, write the trained model and result.json."""
        if self.best is not None:
            with torch.no_grad():
                for name, param in self.named:
                    param.copy_(self.best[name])
        best_record = next(h for h in self.state.history if h["epoch"] == self.state.best_epoch)
        test = self.evaluate("test")
        result = self.result({k: v for k, v in best_record.items() if k not in ("type", "split", "step", "epoch")}, test)
        if self.main:
            self.method.save(self.model, self.tokenizer, self.out)
            self.log.write({"type": "eval", "split": "test", "step": self.state.step, **test})
            atomic_write_json(self.out / "result.json", result)
        self.emit("on_train_end", result=result)
        self.barrier()
        return result

    def result(self, validation: dict, test: dict) -> dict:
        cfg = self.cfg
        return {
            "method": cfg.method, "model": cfg.model, "data": cfg.data, "task": self.task, "labels": self.labels,
            "config": cfg.to_dict(), "lora": None, "subspace": None, **self.method.describe(self.model, cfg),
            "trainable_params": self.trainable, "total_params": self.total,
            "train_examples": self.n_train, "steps": self.state.step, "epochs_trained": self.state.epoch,
            "best_epoch": self.state.best_epoch,
            "validation": validation, "test": test, "history": self.state.history,
            "wall_time_s": self.state.elapsed + time.time() - self.started,
            "peak_memory_mb": peak_memory_mb(), "world_size": self.world, "resumed_from_step": self.resumed_from,
            "attention": self.attention, "torch": torch.__version__,
        }

    # ----- helpers -----------------------------------------------------------------------------
    def emit(self, hook: str, **kwargs) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, **kwargs)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def last_checkpoint(self) -> Optional[tuple[Path, int]]:
        """(checkpoint directory, its step), or None when none was written."""
        ckpt = Path(self.cfg.out) / "checkpoint"
        if not has_checkpoint(ckpt):
            return None
        return ckpt, json.loads((ckpt / STATE_FILE).read_text())["step"]

    def non_finite_loss(self, value: float, epoch: int) -> TrainingError:
        """The error for a nan/inf loss: where the last good checkpoint is and what to change."""
        last = self.last_checkpoint()
        where = f"the last good checkpoint is {last[0]} (step {last[1]})" if last else "no checkpoint was written yet"
        return TrainingError(f"training loss is {value} at step {self.state.step + 1} (epoch {epoch + 1}); stopped. "
                             f"{where}. Lower --lr (now {self.cfg.lr}) or --max-grad-norm, then resume with --resume.")


def train(cfg: TrainConfig, callbacks: Sequence[Callback] = (), progress: bool = True) -> dict:
    """Run one fine-tuning job; returns (and writes to ``<out>/result.json``) its result."""
    return Trainer(cfg, callbacks, progress).run()
