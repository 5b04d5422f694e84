"""Train a loralab-injected model inside Hugging Face's ``transformers.Trainer``.

    ll.inject(model, ll.LoraConfig(r=8, targets=["query", "value"], modules_to_save=["classifier"]))
    trainer = Trainer(model=model, args=TrainingArguments(..., bf16=True), train_dataset=...,
                      callbacks=[SaveAdapterCallback()])

The injected model is an ordinary ``nn.Module`` to the Trainer: only the adapter (and
``modules_to_save``) parameters require gradients, and under ``bf16=True`` the Trainer's
``torch.autocast`` runs the fused LoRA/DoRA nodes in bfloat16 while the adapter weights and
optimizer state stay float32. `SaveAdapterCallback` writes the adapter in PEFT format next to
every checkpoint (``checkpoint-<step>/adapter``), which ``PeftModel.from_pretrained`` and
`loralab.load_adapter` both read.
"""

from __future__ import annotations

import os

from transformers import TrainerCallback

import loralab as ll

ADAPTER_DIR = "adapter"


class SaveAdapterCallback(TrainerCallback):
    """On every Trainer checkpoint, save adapter ``name`` as ``checkpoint-<step>/adapter`` (PEFT format)."""

    def __init__(self, name: str = "default"):
        self.name = name

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            ll.save_adapter(model, os.path.join(checkpoint, ADAPTER_DIR), name=self.name)  # DDP: unwrapped there
        return control
