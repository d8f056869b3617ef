"""Output formats, one module each: NIfTI label maps, DICOM-SEG, JSON predictions, the run summary."""
