"""Tests of decoding, DICOM and heatmaps."""
