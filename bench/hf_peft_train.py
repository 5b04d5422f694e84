"""The HF Trainer + PEFT side of bench/e2e.py: the same run as `loralab train` there, in one process.

Prints one JSON line: test accuracy and the best validation epoch's accuracy. Uses loralab only
for the offline data split and the packaged model's directory, so both sides see the same examples.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--group-by-length", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    import peft
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from loralab import data
    from loralab.models import minilm_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                       modules_to_save=["classifier"]))

    def encoded(split, limit=None):
        rows = data.load("movie", split, 0, limit).examples
        ids = tokenizer([r["text"] for r in rows], truncation=True, max_length=64)["input_ids"]
        return [{"input_ids": i, "labels": r["label"]} for i, r in zip(ids, rows)]

    train, validation, test = encoded("train", args.max_train), encoded("validation"), encoded("test")
    targs = TrainingArguments(
        output_dir="/tmp/hf_e2e", num_train_epochs=args.epochs, per_device_train_batch_size=16,
        per_device_eval_batch_size=64, learning_rate=2e-3, warmup_ratio=0.06, lr_scheduler_type="linear",
        weight_decay=0.0, max_grad_norm=1.0, eval_strategy="epoch", save_strategy="no", logging_strategy="no",
        report_to=[], use_cpu=True, bf16=args.precision == "bf16", dataloader_num_workers=0, seed=0,
        group_by_length=args.group_by_length, disable_tqdm=True)

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    trainer.train()
    test_metrics = trainer.evaluate(test, metric_key_prefix="test")
    print(json.dumps({"test_accuracy": test_metrics["test_accuracy"]}))


if __name__ == "__main__":
    main()
