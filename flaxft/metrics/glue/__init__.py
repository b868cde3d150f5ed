"""GLUE-style `evaluate` metric module; load it with `flaxft.metrics.load_metric` or `evaluate.load(<this folder>)`."""
