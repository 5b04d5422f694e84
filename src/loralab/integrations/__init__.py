"""Bridges to other training stacks (Hugging Face Trainer)."""
