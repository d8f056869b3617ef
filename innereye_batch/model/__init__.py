"""The registered model folder: configuration, checkpoints, architectures. Nothing here reads DICOM."""
