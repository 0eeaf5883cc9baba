"""Tests of the networks, training, evaluation and the shipped model."""
