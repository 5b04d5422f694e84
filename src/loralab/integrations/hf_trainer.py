"""Train a loralab-injected model inside Hugging Face's ``transformers.Trainer``.

    ll.inject(model, ll.LoraConfig(r=8, targets=["query", "value"], modules_to_save=["classifier"]))
    trainer = AdapterTrainer(model=model, args=TrainingArguments(...), train_dataset=...)

`AdapterTrainer` is ``transformers.Trainer`` whose checkpoints (``checkpoint-<step>/``) and final save hold
the adapter in PEFT format (``adapter_config.json``, ``adapter_model.safetensors``: the LoRA factors and
the trained ``modules_to_save``), as the Trainer does for a PEFT model — not the frozen base model's
weights; ``resume_from_checkpoint`` and ``load_best_model_at_end`` read them back. Under ``bf16=True``
the Trainer's ``torch.autocast`` runs the fused LoRA/DoRA nodes in bfloat16 while the adapter weights and
optimizer state stay float32 (pays only on hardware with native bf16: `loralab.train.devices.native_bf16`).

`SaveAdapterCallback` is the older way, for a plain ``Trainer``: it writes the adapter beside each
checkpoint (``checkpoint-<step>/adapter``), which still holds the whole model too.
"""

from __future__ import annotations

import os

from transformers import Trainer, TrainerCallback

import loralab as ll
from loralab.io.peft_format import WEIGHTS_FILE, copy_adapter_weights

ADAPTER_DIR = "adapter"


class AdapterTrainer(Trainer):
    """``transformers.Trainer`` for a loralab-injected model: saves and loads adapter ``adapter_name`` only."""

    def __init__(self, *args, adapter_name: str = "default", **kwargs):
        self.adapter_name = adapter_name
        super().__init__(*args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        ll.save_adapter(self.accelerator.unwrap_model(self.model), output_dir, name=self.adapter_name)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_adapter(resume_from_checkpoint, model)

    def _load_best_model(self):
        self._load_adapter(self.state.best_model_checkpoint, None)

    def _load_adapter(self, checkpoint, model) -> None:
        if not os.path.exists(os.path.join(checkpoint, WEIGHTS_FILE)):
            raise ValueError(f"{checkpoint} holds no {WEIGHTS_FILE}: it was not saved by AdapterTrainer.")
        copy_adapter_weights(self.accelerator.unwrap_model(model or self.model), checkpoint, self.adapter_name)


class SaveAdapterCallback(TrainerCallback):
    """On every Trainer checkpoint, save adapter ``name`` as ``checkpoint-<step>/adapter`` (PEFT format)."""

    def __init__(self, name: str = "default"):
        self.name = name

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            ll.save_adapter(model, os.path.join(checkpoint, ADAPTER_DIR), name=self.name)  # DDP: unwrapped there
        return control
