"""Training methods: one object per way of fine-tuning, found by name in one registry.

    method = get_method("lora")
    trained = method.prepare(model, cfg, task)      # the module the trainer trains
    method.save(trained, tokenizer, run_dir)

Every module of this package registers its methods when imported (`base.register`), and
this package imports them all, so a new method is one new file here plus its tests.
"""

from __future__ import annotations

import importlib
import pkgutil

from loralab.methods.base import TrainingMethod, get_method, method_names, method_specific_fields, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TrainingMethod", "get_method", "method_names", "method_specific_fields", "register"]
