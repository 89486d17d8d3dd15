"""VPO's prompt templates (paper Figures 7 and 8, the official critique rules) and the
parsers of the answers."""
