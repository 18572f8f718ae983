"""megasci: from raw arXiv LaTeX sources to a pretrained scientific language model."""

__version__ = "0.1.0"
