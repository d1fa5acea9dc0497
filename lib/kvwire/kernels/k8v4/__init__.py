"""k8v4 (``codecs/k8v4.py``): int8 keys, int4 values, per token or per group."""
