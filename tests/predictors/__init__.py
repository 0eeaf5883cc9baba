"""Tests of the model's runtimes, the AutoML client and the gate."""
