"""Pure tensor functions on any device: pre-processing, sliding window, ensembles, post-processing.

No file I/O and no DICOM here.
"""
