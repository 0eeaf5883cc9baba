"""Decoding and preparing uploads: PNG, JPEG and GIF (`prepare`), DICOM (`dicom`),
and the heat-map overlay (`heatmap`).

May import only the base modules (settings, errors, labels, version)."""
