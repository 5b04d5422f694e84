"""The training loop, one `Trainer` for every method, in named steps with hooks.

AdamW with warm-up and a linear, cosine or constant schedule (transformers' schedulers), gradient
clipping and accumulation, validation every ``eval_steps`` optimizer steps (or at each epoch's end), the
best validation's weights kept (``metric_for_best``) and tested at the end, early stopping after
``patience`` validations without a better one. What is trained comes from the method
(`loralab.methods`); the loss from the task (`objective.Objective`); what is measured along the way from
callbacks (`loralab.train.callbacks`). Checkpoints (`checkpoint.py`) let a killed run resume to
bit-identical weights. Under ``torchrun`` every global batch of ``batch_size`` examples is split evenly
over the processes, with DDP or FSDP2 (`distributed.py`), on the device ``--device`` names (`devices.py`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

import loralab as ll
from loralab import data as datasets
from loralab import models
from loralab.errors import TrainingError
from loralab.methods import get_method
from loralab.progress import progress, write_line
from loralab.rundir import RunDir, RunResult
from loralab.tasks.batching import collate, cut, encode, epoch_order, forward_pieces, labelled
from loralab.tasks.objective import Objective
from loralab.train import devices, distributed, run_dir
from loralab.train.callbacks import Callback
from loralab.train.checkpoint import STATE_FILE, has_checkpoint, load_checkpoint, prune_checkpoint, save_checkpoint
from loralab.train.config import TrainConfig
from loralab.train.evaluate import evaluate


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs finished
    micro: int = 0  # micro-batches done in the current epoch
    best_metric: Optional[float] = None  # the best validation's metric_for_best, higher is better (loss negated)
    best_epoch: Optional[int] = None  # the epoch the best validation was in
    best_step: Optional[int] = None
    history: list = field(default_factory=list)  # validation records
    stopped: bool = False  # early stopping ended the run
    elapsed: float = 0.0  # wall seconds before the last resume


class MetricsLog:
    """metrics.jsonl: one JSON object per line; on resume, records past the checkpoint (and a last line cut
    short by a kill) are dropped."""

    def __init__(self, run: RunDir, enabled: bool, resume_step: Optional[int]):
        self.path, self.enabled = run.metrics_file, enabled
        if enabled and resume_step is not None:
            kept = [record for record in run.metrics() if record.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        elif enabled:
            self.path.write_text("")

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
    def run(self) -> RunResult:
        self.setup_processes()
        self.out = run_dir.check_out(self.cfg)
        self.rundir = RunDir(self.out)
        finished = self.rundir.result() if self.cfg.resume else None
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
            self.train()
            return self.finish()
        except BaseException:
            if self.main:
                run_dir.discard_if_empty(self.out, created)
            raise
        finally:
            run_dir.release(held)

    def setup_processes(self) -> None:
        """Rank, world size and device; a process group (NCCL on CUDA, gloo on CPU) under torchrun."""
        cfg = self.cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = devices.resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(devices.process_group_backend(self.device))
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.main = self.rank == 0
        if cfg.threads or self.world > 1:
            torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // self.world))
        if cfg.batch_size % self.world:
            raise TrainingError(f"--batch-size {cfg.batch_size} must be divisible by the {self.world} processes.")

    def load_data_and_model(self) -> None:
        """Seeded splits, the base model, the method's trainable module and the encoded rows."""
        cfg = self.cfg
        self.started = time.time()
        torch.manual_seed(cfg.seed)
        split = datasets.load_splits(cfg.data, cfg.seed, cfg.max_train, cfg.max_eval, cfg.val_data, cfg.test_data)
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
        self.model = self.method.prepare(base, cfg, self.task).to(self.device)
        self.trainable, self.total = ll.trainable_parameters(self.model)
        self.rows = {s: encode(d, self.tokenizer, cfg.max_length) for s, d in split.items()}
        self.pad_id = self.tokenizer.pad_token_id
        self.objective = Objective(self.model, self.task, lean=True)
        self.net = distributed.wrap(self.objective, self.device, self.world, cfg.fsdp)
        self.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]  # FSDP2's, once sharded
        self.scaler = devices.grad_scaler(cfg.precision, self.device)

    def build_optimizer(self) -> None:
        from transformers import get_scheduler

        cfg = self.cfg
        self.n_train = len(self.rows["train"])
        per_epoch = self.n_train // cfg.batch_size if self.world > 1 else math.ceil(self.n_train / cfg.batch_size)
        self.micro_per_epoch = per_epoch
        self.total_steps = math.ceil(per_epoch / cfg.grad_accum) * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.optimizer = torch.optim.AdamW([p for _, p in self.named], lr=cfg.lr, weight_decay=cfg.weight_decay)
        name = {"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler)
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=round(cfg.warmup * self.total_steps),
                                       num_training_steps=self.total_steps)

    def restore(self) -> None:
        """Load the checkpoint on --resume; otherwise record the config (absolute paths) in the run."""
        if self.cfg.resume and has_checkpoint(self.rundir.checkpoint):  # (a run killed before any: starts over)
            record, self.best = load_checkpoint(self.rundir.checkpoint, self.named, self.optimizer, self.scheduler,
                                                self.device)
            self.state = TrainState(**{k: record[k] for k in asdict(TrainState()) if k in record})
            self.resumed_from = self.state.step
        elif self.main:
            self.rundir.write_config(self.cfg.with_absolute_paths().to_dict())
        self.log = MetricsLog(self.rundir, self.main, self.resumed_from)

    def train(self) -> None:
        self.bar = progress(self.total_steps, f"{self.cfg.method} {Path(self.cfg.model).name}/{Path(self.cfg.data).name}",
                            enabled=self.show_progress and self.main, initial=self.state.step)
        for epoch in range(self.state.epoch, self.cfg.epochs):
            if self.state.stopped or self.state.step >= self.total_steps:
                break
            self.train_epoch(epoch)
            if self.state.stopped:
                break
            if not self.cfg.eval_steps:  # (with --eval-steps, validation follows the steps)
                self.validate(epoch)
            self.state.epoch, self.state.micro = epoch + 1, 0
            self.checkpoint()
        self.bar.close()

    def train_epoch(self, epoch: int) -> None:
        """Micro-batches of this epoch's fixed order, from where a resumed run stopped."""
        cfg = self.cfg
        lengths = [len(r["input_ids"]) for r in self.rows["train"]] if self.group_by_length() else None
        order = epoch_order(self.n_train, cfg.seed, epoch, lengths, cfg.batch_size)
        micro = [order[i : i + cfg.batch_size] for i in range(0, self.micro_per_epoch * cfg.batch_size, cfg.batch_size)]
        self.objective.train()
        running = 0.0
        for index in range(self.state.micro if epoch == self.state.epoch else 0, len(micro)):
            group_start = index - index % cfg.grad_accum
            group_size = min(cfg.grad_accum, len(micro) - group_start)
            last_of_group = index == group_start + group_size - 1
            running += self.forward_backward(micro[index], group_size, last_of_group, epoch) / group_size
            if last_of_group:
                self.optimizer_step(epoch, index, running)
                running = 0.0
                if self.state.stopped or self.state.step >= self.total_steps:
                    return

    def group_by_length(self) -> bool:
        """--group-by-length, on by default for causal LM (answers vary in length: padding is the waste)."""
        return self.task == "causal_lm" if self.cfg.group_by_length is None else self.cfg.group_by_length

    def forward_backward(self, batch_ids: list[int], group_size: int, sync: bool, epoch: int) -> float:
        """Loss of one micro-batch (this process's share), backward scaled for accumulation. A share above
        --train-tokens runs as several forwards, each loss weighted by its share of the labelled count, so the
        gradients add up to the share's mean loss's."""
        shares = [[self.rows["train"][i] for i in batch_ids[rank :: self.world]] for rank in range(self.world)]
        pieces = cut(shares[self.rank], forward_pieces(shares, self.train_tokens()))
        total, value = sum(labelled(row) for row in shares[self.rank]), 0.0
        for index, rows in enumerate(pieces):
            batch = devices.to_device(collate(rows, self.pad_id), self.device)
            weight = sum(labelled(row) for row in rows) / total if total else 1 / len(pieces)
            with distributed.sync_gradients(self.net, sync and index == len(pieces) - 1):
                with devices.autocast(self.cfg.precision, self.device):
                    loss = self.net(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
                part = distributed.mean(loss.detach().float() * weight, self.world)
                if weight == 0:  # no labelled token in this piece: it adds nothing (its mean would be 0 / 0)
                    part, loss = part.nan_to_num(0.0), loss.nan_to_num(0.0)
                if not torch.isfinite(part):
                    raise self.non_finite_loss(part.item(), epoch)
                scaled = loss * weight / group_size
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            value += part.item()
        return value

    def train_tokens(self) -> Optional[int]:
        """--train-tokens, 1024 by default for causal LM (activations of long sequences are the memory)."""
        if self.cfg.train_tokens is None and self.task == "causal_lm":
            return 1024
        return self.cfg.train_tokens

    def optimizer_step(self, epoch: int, index: int, loss: float) -> None:
        cfg, state = self.cfg, self.state
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.named], cfg.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
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
        validated = cfg.eval_steps and (state.step % cfg.eval_steps == 0 or state.step >= self.total_steps)
        if validated:
            self.validate(epoch)
        if validated or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
            self.checkpoint()

    # ----- validation and the best weights -----------------------------------------------------
    def metric_for_best(self) -> str:
        return self.cfg.metric_for_best or ("accuracy" if self.task == "classification" else "loss")

    def validate(self, epoch: int) -> None:
        metrics = self.evaluate("validation")
        state = self.state
        record = {"type": "eval", "split": "validation", "step": state.step, "epoch": epoch + 1, **metrics}
        state.history.append(record)
        self.log.write(record)
        name = self.metric_for_best()
        value = -metrics[name] if name == "loss" else metrics[name]
        if state.best_metric is None or value > state.best_metric:
            state.best_metric, state.best_epoch, state.best_step = value, epoch + 1, state.step
            self.best = {n: p.detach().clone() for n, p in self.named}
        since_best = sum(1 for h in state.history if h["step"] > state.best_step)
        if self.cfg.patience and since_best >= self.cfg.patience and state.step >= self.cfg.min_steps:
            state.stopped = True
        if self.main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            write_line(f"step {state.step}/{self.total_steps}, epoch {epoch + 1}: validation {shown}"
                       f"{' (best)' if state.best_step == state.step else ''}"
                       f"{'; stopping: no better ' + name + f' in {since_best} validations' if state.stopped else ''}",
                       enabled=self.show_progress)
        self.emit("on_eval", record=record)

    def evaluate(self, split: str) -> dict:
        cfg = self.cfg
        return evaluate(self.model, self.rows[split], self.task, len(self.labels), self.pad_id, cfg.eval_batch_size,
                        desc=split, progress=self.show_progress and self.main, max_tokens=cfg.eval_tokens,
                        precision=cfg.precision, device=self.device, objective=self.net, rank=self.rank,
                        world=self.world)

    def checkpoint(self) -> None:
        """Every process takes part (FSDP gathers its shards); the main one writes."""
        record = {**asdict(self.state), "elapsed": self.state.elapsed + time.time() - self.started,
                  "config": self.cfg.to_dict()}
        path = save_checkpoint(self.rundir.checkpoint, self.named, self.optimizer, self.scheduler, self.best, record,
                               devices.rng_state(self.device), write=self.main)
        if self.main:
            self.emit("on_checkpoint", path=path)

    def finish(self) -> RunResult:
        """Restore the best validation's parameters, test them, write the trained model and result.json."""
        if self.best is not None:
            with torch.no_grad():
                for name, param in self.named:
                    param.copy_(self.best[name])
        best_record = next(h for h in self.state.history if h["step"] == self.state.best_step)
        test = self.evaluate("test")
        result = self.result({k: v for k, v in best_record.items() if k not in ("type", "split", "step", "epoch")}, test)
        # every process takes part (FSDP gathers the shards); the main one writes
        self.method.save(self.model, self.tokenizer, self.out, write=self.main, training=self.card(test))
        if self.main:
            self.log.write({"type": "eval", "split": "test", "step": self.state.step, **test})
            self.rundir.write_result(result)
            if self.cfg.save_total_limit == 0:
                prune_checkpoint(self.rundir.checkpoint)
        self.emit("on_train_end", result=result)
        self.barrier()
        return result

    def card(self, test: dict) -> dict:
        """What a saved adapter's model card says about this run."""
        best = next(h for h in self.state.history if h["step"] == self.state.best_step)
        return {"data": self.cfg.data, "labels": self.labels, "command": "loralab train --config config.json",
                "metrics": {"validation (best)": {k: v for k, v in best.items() if k not in ("type", "split")},
                            "test": test}}

    def result(self, validation: dict, test: dict) -> RunResult:
        cfg = self.cfg
        return RunResult(
            method=cfg.method, model=cfg.model, data=cfg.data, task=self.task, labels=self.labels,
            config=cfg.to_dict(), **self.method.describe(self.model, cfg),
            trainable_params=self.trainable, total_params=self.total,
            train_examples=self.n_train, steps=self.state.step, epochs_trained=self.state.epoch,
            best_epoch=self.state.best_epoch, best_step=self.state.best_step, validation=validation, test=test,
            history=self.state.history, wall_time_s=self.state.elapsed + time.time() - self.started,
            peak_memory_mb=devices.peak_memory_mb(), peak_device_memory_mb=devices.peak_device_memory_mb(self.device),
            device=str(self.device), world_size=self.world, resumed_from_step=self.resumed_from,
            attention=self.attention, torch=torch.__version__,
        )

    # ----- helpers -----------------------------------------------------------------------------
    def emit(self, hook: str, **kwargs) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, **kwargs)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def last_checkpoint(self) -> Optional[tuple[Path, int]]:
        """(checkpoint directory, its step), or None when none was written."""
        ckpt = RunDir(self.cfg.out).checkpoint
        if not has_checkpoint(ckpt):
            return None
        return ckpt, json.loads((ckpt / STATE_FILE).read_text())["step"]

    def non_finite_loss(self, value: float, epoch: int) -> TrainingError:
        """The error for a nan/inf loss: where the last good checkpoint is and what to change."""
        last = self.last_checkpoint()
        where = f"the last good checkpoint is {last[0]} (step {last[1]})" if last else "no checkpoint was written yet"
        return TrainingError(f"training loss is {value} at step {self.state.step + 1} (epoch {epoch + 1}); stopped. "
                             f"{where}. Lower --lr (now {self.cfg.lr}) or --max-grad-norm, then resume with --resume.")


def standard_callbacks(cfg) -> list[Callback]:
    """The callbacks a config asks for by its flags (``--analysis-every``, ``--report-to``)."""
    callbacks: list[Callback] = []
    if cfg.analysis_every:
        from loralab.train.telemetry import Telemetry

        callbacks.append(Telemetry(cfg.analysis_every))
    if cfg.trackers():
        from loralab.train.trackers import trackers_for

        callbacks += trackers_for(cfg.trackers())
    return callbacks


def train(cfg: TrainConfig, callbacks: Sequence[Callback] = (), progress: bool = True) -> RunResult:
    """Run one fine-tuning job; returns (and writes to ``<out>/result.json``) its result."""
    return Trainer(cfg, callbacks, progress).run()
