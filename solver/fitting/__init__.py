"""Fitting the heights.

Settings and outputs, the driver, damped Newton, the Adam baseline, checkpoints.
"""
