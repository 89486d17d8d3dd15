"""The evaluate stage: text-level alignment of each method's prompts on held-out queries
(paper Table 2) and iterative re-optimisation (Table 3)."""
