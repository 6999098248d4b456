"""Command-line tools around the pipeline: ML Metadata inspection and TF Serving clients."""
