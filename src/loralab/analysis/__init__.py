"""Measurements of adaptation geometry."""
