"""The render stage: a diffusers text-to-video pipeline turns each prompt that passed the
text check into an MP4 and a contact sheet (paper §3.2, video-level feedback)."""
