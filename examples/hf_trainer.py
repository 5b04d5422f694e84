"""LoRA from loralab inside Hugging Face's ``transformers.Trainer``: ``python examples/hf_trainer.py``.

`AdapterTrainer` is the Trainer with checkpoints that hold the adapter in PEFT format (not the frozen base
model), which ``PeftModel.from_pretrained`` and ``ll.load_adapter`` both read. bf16 is switched on only
where the hardware runs it natively (a CPU with AVX512-BF16/AMX, a recent GPU): elsewhere it is emulated
and slower than fp32. One epoch on 96 real movie-review snippets: about a minute on two CPU cores.
"""

import tempfile
from pathlib import Path

import torch
from transformers import TrainingArguments

import loralab as ll
from loralab import data, models
from loralab.integrations.hf_trainer import AdapterTrainer
from loralab.tasks.batching import collate, encode
from loralab.train.devices import native_bf16

torch.manual_seed(0)
bf16 = native_bf16()
# eager attention: on CPU, SDPA's bf16 backward is slower than its fp32 one (docs/training.md)
model, tokenizer = models.load("minilm", "classification", num_labels=2, attn_implementation="eager" if bf16 else None)
adapted = ll.inject(model, ll.LoraConfig(r=8, alpha=16, modules_to_save=models.head_names(model)))
print(len(adapted), "adapted modules, e.g.", adapted[0], "| bf16:", bf16)  # no targets: the attention query/value

rows = encode(data.load("movie", "train", seed=0, limit=96), tokenizer, max_length=64)
out = Path(tempfile.mkdtemp())
args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=16, num_train_epochs=1,
                         learning_rate=2e-3, bf16=bf16, use_cpu=not torch.cuda.is_available(), save_strategy="epoch",
                         logging_strategy="no", report_to=[], dataloader_num_workers=0)
trainer = AdapterTrainer(model=model, args=args, train_dataset=rows,
                         data_collator=lambda batch: collate(batch, tokenizer.pad_token_id))
trainer.train()

checkpoint = out / f"checkpoint-{trainer.state.global_step}"
print("checkpoint holds:", sorted(p.name for p in checkpoint.iterdir() if not p.name.startswith(("rng", "training"))))
reloaded, _ = models.load("minilm", "classification", num_labels=2)
ll.load_adapter(reloaded, checkpoint)
# after a bf16 run, Accelerate leaves model.forward wrapped in autocast; unwrap it to compare in float32
trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
batch = collate(rows[:8], tokenizer.pad_token_id)
with torch.no_grad():
    same = torch.allclose(trained.eval()(**batch).logits, reloaded.eval()(**batch).logits, atol=1e-5)
print("reloaded adapter gives the same logits:", same)
