"""Hugging Face models in and out of laggrow: `laggrow import` (importer.py) and `laggrow export`
(exporter.py), the config and tensor mapping both use (convert.py), safetensors files (weights.py)
and tokenizer files transformers loads (tokenizer.py). Neither torch nor transformers is imported."""
