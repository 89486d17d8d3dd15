"""Preference pairs for DPO from text-level and video-level feedback."""
