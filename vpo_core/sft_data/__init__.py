"""The sft-data stage: teacher generation, judge critique, refinement (paper §3.1)."""
