"""The README's Python example, runnable as is: ``python examples/quickstart.py`` (seconds on a CPU).

It uses the packaged all-MiniLM-L6-v2 and real movie-review snippets, trains two adapters for a
few steps, then saves, reloads, stacks, routes, merges and unloads them.
"""

import tempfile

import torch

import loralab as ll
from loralab import data, models
from loralab.tasks.batching import collate, encode

model, tokenizer = models.load("minilm", "classification", num_labels=2)  # any HF directory works too
rows = encode(data.load("movie", "train", seed=0, limit=48), tokenizer, max_length=64)
batch = collate(rows[:16], tokenizer.pad_token_id)  # input_ids, attention_mask, labels


def train_a_little(model, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()


cfg = ll.LoraConfig(r=8, alpha=16, targets=["query", "value"], modules_to_save=["classifier"])
print(ll.inject(model, cfg, name="sst")[:2], "...")  # the adapted modules; everything else is frozen
print("trainable, total:", ll.trainable_parameters(model))
train_a_little(model)
ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=["key"], modules_to_save=["classifier"]), name="other")
train_a_little(model)  # inject made "other" the active, trainable adapter

model.eval()
three = collate(rows[16:19], tokenizer.pad_token_id)
three.pop("labels")
with tempfile.TemporaryDirectory() as tmp:
    ll.save_adapter(model, f"{tmp}/sst", name="sst")  # PEFT format: PeftModel.from_pretrained reads it
    ll.load_adapter(model, f"{tmp}/sst", name="sst_copy")  # ours or PEFT's; loaded frozen, now the only active one
    with torch.no_grad():
        copy_logits = model(**three).logits
        ll.set_active(model, ["sst"])
        assert torch.allclose(model(**three).logits, copy_logits, atol=1e-5)

with torch.no_grad():
    ll.set_active(model, ["sst", "other"])  # stacked: the LoRA updates add up; the head is the first one's copy
    stacked = model(**three).logits
    with ll.disabled(model):
        base = model(**three).logits  # the pretrained model (with its untrained head)
    with ll.routing(model, ["sst", "other", "__base__"]):  # one adapter per example, in one batch
        mixed = model(**three).logits
    assert torch.allclose(mixed[2], base[2], atol=1e-5)  # "__base__" runs no adapter
    ll.merge(model)  # fold the active adapters into the weights...
    assert torch.allclose(model(**three).logits, stacked, atol=1e-4)
    ll.unmerge(model)  # ...and take them out again, exactly
    plain = ll.merge_and_unload(model)  # a plain Hugging Face model again
    assert torch.allclose(plain(**three).logits, stacked, atol=1e-4)
print("stacked", stacked[0].tolist(), "base", base[0].tolist(), "routed", mixed[2].tolist())
