"""Training the prompt optimizer: SFT and DPO with trl, in process or under accelerate."""
