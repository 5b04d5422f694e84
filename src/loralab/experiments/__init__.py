"""Experiments: recipes that compose the library into studies, with plots and reports.

Nothing in the core packages imports from here. Each experiment builds `launcher.Unit`s (a
name and a `TrainConfig`) and runs them as cached units; plotting and report writing sit on
top of the results.

* `study` — the quick study behind ``make study`` (full FT vs LoRA vs DoRA on MiniLM/movie);
* `d90_sweep` — the intrinsic-dimension sweep behind ``loralab intrinsic``;
* `launcher` — cached units, local worker pool and Ray executors.
"""
