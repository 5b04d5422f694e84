"""LoRA from loralab inside Hugging Face's ``transformers.Trainer``: ``python examples/hf_trainer.py``.

The injected model is a plain ``nn.Module`` to the Trainer. Under ``bf16=True`` the fused LoRA
nodes run in bfloat16 while the adapter weights and AdamW state stay float32; the callback
writes a PEFT-format adapter into every checkpoint, which ``PeftModel.from_pretrained`` and
``ll.load_adapter`` both read. Runs in well under a minute on a CPU (96 real movie-review
snippets, one epoch).
"""

import tempfile
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

import loralab as ll
from loralab import data, models
from loralab.integrations.hf_trainer import SaveAdapterCallback
from loralab.train.batching import collate, encode

torch.manual_seed(0)
# eager attention: on CPU, SDPA's bf16 backward is slower than its fp32 one (docs/training.md)
model, tokenizer = models.load("minilm", "classification", num_labels=2, attn_implementation="eager")
adapted = ll.inject(model, ll.LoraConfig(r=8, alpha=16, modules_to_save=models.head_names(model)))
print(len(adapted), "adapted modules, e.g.", adapted[0])  # no targets given: the attention query/value

rows = encode(data.load("movie", "train", seed=0, limit=96), tokenizer, max_length=64)
out = Path(tempfile.mkdtemp())
args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=16, num_train_epochs=1,
                         learning_rate=2e-3, bf16=True, use_cpu=True, save_strategy="epoch", logging_strategy="no",
                         report_to=[], dataloader_num_workers=0)
trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[SaveAdapterCallback()],
                  data_collator=lambda batch: collate(batch, tokenizer.pad_token_id))
trainer.train()

adapter = out / f"checkpoint-{trainer.state.global_step}" / "adapter"
print("saved:", sorted(p.name for p in adapter.iterdir()))
reloaded, _ = models.load("minilm", "classification", num_labels=2, attn_implementation="eager")
ll.load_adapter(reloaded, adapter)
# after a bf16 run, Accelerate leaves model.forward wrapped in autocast; unwrap it to compare in float32
trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
batch = collate(rows[:8], tokenizer.pad_token_id)
with torch.no_grad():
    same = torch.allclose(trained.eval()(**batch).logits, reloaded.eval()(**batch).logits, atol=1e-5)
print("reloaded adapter gives the same logits:", same)
