"""Video rewards for the score stage: frame metrics (the embedded default), VisionReward's
checklist answered by VisionReward-Video or by any vision LLM, and their scores."""
