"""The sample stage: K prompts per DPO query from the SFT model (paper §3.2)."""
