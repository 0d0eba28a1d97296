"""Evaluation of erased models (NudeNet on I2P, FID/KID, CLIP score, the shapes world): see the README."""
