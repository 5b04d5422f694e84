"""The HF Trainer + PEFT side of bench/llm.py: the same causal-LM LoRA run as `loralab train` there, in one process.

Prints one JSON line: the held-out (test) loss as the mean over response tokens, the training tokens, the
process's peak RSS. Uses loralab only for the offline data split, the packaged model's directory and the
tokenisation (chat format, prompt tokens masked), so both sides see the same examples and labels.
"""

from __future__ import annotations

import argparse
import json
import resource

import torch


def collate(rows, pad_id):
    from loralab.tasks.batching import collate as ours

    return ours(rows, pad_id)


def held_out_loss(model, rows, pad_id, batch_size: int = 8) -> float:
    """Mean next-token loss over the response tokens of ``rows`` (the same definition as loralab's)."""
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start:start + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                       targets.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(losses)
            tokens += int((targets != -100).sum())
    return total / tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-train", type=int, default=200)
    parser.add_argument("--max-eval", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--group-by-length", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    import peft
    from transformers import Trainer, TrainingArguments

    from loralab import data, models
    from loralab.tasks.batching import encode

    torch.manual_seed(0)
    model, tokenizer = models.load("smollm2", "causal_lm")  # the same float32 model and chat tokenizer
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                       task_type="CAUSAL_LM"))
    splits = data.load_splits("chat-qa", 0, args.max_train, args.max_eval)
    train, validation, test = (encode(splits[s], tokenizer, args.max_length) for s in ("train", "validation", "test"))
    for row in train:
        row["length"] = len(row["input_ids"])  # what group_by_length sorts by
    targs = TrainingArguments(
        output_dir="/tmp/hf_llm_bench", num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=0.06,
        lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0, eval_strategy="epoch", save_strategy="no",
        logging_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
        group_by_length=args.group_by_length, disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=validation,
                      data_collator=lambda rows: collate([{k: r[k] for k in ("input_ids", "labels")} for r in rows],
                                                         tokenizer.pad_token_id))
    trainer.train()
    print(json.dumps({"test_loss": held_out_loss(model, test, tokenizer.pad_token_id),
                      "train_tokens": sum(len(r["input_ids"]) for r in train) * args.epochs,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
