"""KIVI 2 / 4 bit (``codecs/kivi.py``): per-channel key groups, per-token values, full-precision residuals."""
