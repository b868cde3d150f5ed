"""flaxft: fine-tune BERT-family encoders for text classification and regression with JAX/Flax."""

__version__ = "0.1.0"
