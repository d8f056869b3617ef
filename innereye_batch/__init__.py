"""innereye-batch: run InnerEye registered models over folders of DICOM series, in batch."""

__version__ = "0.1.0"
