"""The text-feedback stage: the judge critiques every sample and refines the failing ones."""
