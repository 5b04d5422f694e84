"""Using finished runs: load, evaluate and merge them (`load`), predict with them (`predict`), compare them (`compare`)."""

from loralab.runs.compare import compare_runs, comparison_markdown, is_run, run_row, sort_rows
from loralab.runs.load import (
    evaluate_adapter,
    evaluate_run,
    evaluate_splits,
    load_run,
    load_snapshot,
    merge_adapter,
    merge_run,
    model_with_adapter,
    read_run,
)
from loralab.runs.predict import classify, predict

__all__ = ["classify", "compare_runs", "comparison_markdown", "evaluate_adapter", "evaluate_run", "evaluate_splits",
           "is_run", "load_run", "load_snapshot", "merge_adapter", "merge_run", "model_with_adapter", "predict",
           "read_run", "run_row", "sort_rows"]
