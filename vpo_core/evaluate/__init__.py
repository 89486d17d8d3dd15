"""The evaluate stage: text-level alignment of each method's prompts on a prompt suite
(paper Table 2), video quality (Table 1) and iterative re-optimisation (Table 3)."""
