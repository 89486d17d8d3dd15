"""Model files: the bundled SmolLM2 and where converted models are kept."""
