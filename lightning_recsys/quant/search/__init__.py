"""Accuracy-driven planning: trial runs of one module at a time, per-module sensitivity, the search for
the smallest plan within an accuracy budget, and the accuracy / plan reports."""
