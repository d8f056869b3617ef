"""`innereye-batch run` end to end: data loading, the inference loop, output state and the summary."""
