"""innereye-batch: run InnerEye registered models over folders of DICOM series, in batch."""

__version__ = "0.1.0"

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
"""The default marker that ends DICOM outputs' descriptions and appears on previews (``--clinical-marker``)."""
