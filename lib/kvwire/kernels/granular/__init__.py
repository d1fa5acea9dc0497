"""Per-group and per-channel int8 / int4, and FP8 E5M2: the general uniform quantizers (``codecs/int8.py``, ``fp8.py``)."""
