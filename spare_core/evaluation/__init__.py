"""Evaluation of erasures: metrics with intervals, and the classifiers that judge generations."""
