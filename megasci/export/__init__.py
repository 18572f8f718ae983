"""The parts of the HuggingFace export; `megasci/export_hf.py` puts them together and is the door callers use."""
