"""Activation calibration: range observers and the pass that feeds batches through static int8 linears."""
