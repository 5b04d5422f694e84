"""A loralab-injected model trains inside transformers.Trainer (fp32 and bf16) and saves PEFT-format adapters."""

from __future__ import annotations

import pytest
import torch

import loralab as ll
from conftest import build, inputs, logits
from loralab.integrations.hf_trainer import ADAPTER_DIR, SaveAdapterCallback


@pytest.fixture(autouse=True)
def fresh_accelerate_state(monkeypatch):
    """TrainingArguments(bf16=True) exports ACCELERATE_MIXED_PRECISION=bf16 and Accelerate keeps a process-wide
    state, so a later fp32 Trainer would still train in bf16: give each test a clean slate."""
    from accelerate.state import AcceleratorState

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


class Rows(torch.utils.data.Dataset):
    """Fixed random token ids and labels for the tiny BERT."""

    def __init__(self, n: int = 24):
        self.ids, self.labels = inputs(batch=n, length=7, seed=3), torch.arange(n) % 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("dora", [False, True])
def test_trainer_trains_and_the_callback_writes_a_peft_adapter(tmp_path, bf16, dora):
    peft = pytest.importorskip("peft")
    from transformers import Trainer, TrainingArguments

    model = build("bert")
    ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=["query", "value"], dora=dora, modules_to_save=["classifier"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=2,
                             learning_rate=5e-2, save_strategy="epoch", logging_strategy="no", report_to=[],
                             use_cpu=True, bf16=bf16, dataloader_num_workers=0, save_safetensors=True)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[SaveAdapterCallback()])
    trainer.train()
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) == len(before)  # every adapter tensor (and the head) trained
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    last = tmp_path / f"checkpoint-{trainer.state.global_step}" / ADAPTER_DIR
    assert (last / "adapter_model.safetensors").exists() and (tmp_path / "checkpoint-3" / ADAPTER_DIR).exists()
    model.eval()
    theirs = peft.PeftModel.from_pretrained(build("bert"), last)
    ours = build("bert")
    ll.load_adapter(ours, last)
    torch.testing.assert_close(logits(theirs, inputs()), logits(ours, inputs()), atol=1e-5, rtol=0)
    # after bf16=True, Accelerate leaves model.forward wrapped in autocast, so the live model answers in bf16
    torch.testing.assert_close(logits(model, inputs()), logits(ours, inputs()), atol=0.02 if bf16 else 1e-5, rtol=0)


def test_trainer_with_gradient_checkpointing_trains_every_adapter_tensor(tmp_path):
    """`gradient_checkpointing=True` (reentrant, HF's default) after inject: PEFT needs
    ``enable_input_require_grads()`` here; loralab trains as it does without checkpointing."""
    from transformers import Trainer, TrainingArguments

    losses = {}
    for checkpointing in (False, True):
        model = build("bert")
        ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=["query", "value"], modules_to_save=["classifier"]))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        args = TrainingArguments(output_dir=str(tmp_path / str(checkpointing)), per_device_train_batch_size=8,
                                 num_train_epochs=1, learning_rate=5e-2, save_strategy="no", logging_steps=1,
                                 report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
                                 gradient_checkpointing=checkpointing)
        trainer = Trainer(model=model, args=args, train_dataset=Rows())
        trainer.train()
        assert model.is_gradient_checkpointing == checkpointing
        moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
        assert len(moved) == len(before) == 2 * 2 * 2 + 2  # A and B of q/v in 2 blocks, the head's weight and bias
        losses[checkpointing] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses[True]) == 3 and losses[True] == losses[False]


def test_adapter_trainer_checkpoints_hold_the_adapter_not_the_base(tmp_path):
    """AdapterTrainer: every checkpoint is a PEFT adapter directory (the LoRA factors and the head, a few KB) and no
    model.safetensors (the frozen base, 87 MB for MiniLM); resume_from_checkpoint and load_best_model_at_end read
    it back, and PEFT loads it."""
    peft = pytest.importorskip("peft")
    from transformers import TrainingArguments

    from loralab.integrations.hf_trainer import AdapterTrainer

    def trainer_for(out, epochs, **extra):
        model = build("bert")
        ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=["query", "value"], modules_to_save=["classifier"]))
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=epochs,
                                 learning_rate=5e-2, save_strategy="epoch", eval_strategy="epoch", logging_strategy="no",
                                 report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, **extra)
        return model, AdapterTrainer(model=model, args=args, train_dataset=Rows(), eval_dataset=Rows(6))

    model, trainer = trainer_for(tmp_path / "full", 2)
    trainer.train()
    checkpoint = tmp_path / "full" / "checkpoint-6"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names
    assert "model.safetensors" not in names and "pytorch_model.bin" not in names
    theirs = peft.PeftModel.from_pretrained(build("bert"), checkpoint)
    torch.testing.assert_close(logits(theirs, inputs()), logits(model.eval(), inputs()), atol=1e-5, rtol=0)
    # resume from the first epoch's checkpoint: the same weights as the uninterrupted run
    resumed, trainer = trainer_for(tmp_path / "full", 2)
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    for (name, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    best, trainer = trainer_for(tmp_path / "best", 2, load_best_model_at_end=True, metric_for_best_model="loss")
    trainer.train()
    assert trainer.state.best_model_checkpoint is not None
