"""DICOM in: find series in a folder tree and build 3-D volumes. Nothing here knows about models."""
