"""A model card (README.md) beside a saved adapter, as PEFT and the Hugging Face hub expect one: what the
adapter is for (base model, method, rank, targets), how it was trained and how well (when the caller
knows), and how to load it with PEFT or loralab."""

from __future__ import annotations

from typing import Optional

CARD_FILE = "README.md"


def model_card(config: dict, training: Optional[dict] = None) -> str:
    """The card's Markdown for a PEFT ``adapter_config.json`` dict; ``training`` may hold ``data``,
    ``metrics`` ({split: {name: value}}), ``command`` and ``labels``."""
    base = config.get("base_model_name_or_path") or "(a model built in code)"
    method = "DoRA" if config.get("use_dora") else "LoRA"
    scale = "α/√r (rsLoRA)" if config.get("use_rslora") else "α/r"
    targets = config.get("target_modules") or []
    shown = ", ".join(f"`{t}`" for t in targets[:6]) + (f" and {len(targets) - 6} more" if len(targets) > 6 else "")
    auto = {"SEQ_CLS": "AutoPeftModelForSequenceClassification", "CAUSAL_LM": "AutoPeftModelForCausalLM",
            "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM"}.get(config.get("task_type") or "", "PeftModel")
    lines = [
        "---", "library_name: peft", f"base_model: {base}", "tags: [loralab, lora]", "---", "",
        f"# {method} adapter for {base}", "",
        f"- method: {method} (rank r = {config.get('r')}, α = {config.get('lora_alpha')}, scale {scale}, "
        f"dropout {config.get('lora_dropout')})",
        f"- adapted modules ({len(targets)}): {shown}",
        f"- trained in full with it: {', '.join(config.get('modules_to_save') or []) or 'nothing else'}",
        f"- task type: {config.get('task_type') or 'none given'}",
    ]
    training = training or {}
    if training.get("data"):
        lines.append(f"- data: {training['data']}")
    if training.get("labels"):
        lines.append(f"- classes, in the head's order: {', '.join(map(str, training['labels']))}")
    for split, values in (training.get("metrics") or {}).items():
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        lines.append(f"- {split}: {shown}")
    if training.get("command"):
        lines += ["", "Trained with:", "", "```", training["command"], "```"]
    lines += ["", "## Loading", "", "```python", f"from peft import {auto}",
              f"model = {auto}.from_pretrained(\"<this directory>\")" if auto != "PeftModel" else
              "model = PeftModel.from_pretrained(base_model, \"<this directory>\")",
              "", "import loralab as ll", "ll.load_adapter(base_model, \"<this directory>\")", "```", ""]
    return "\n".join(lines)
