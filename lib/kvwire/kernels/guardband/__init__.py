"""Guard-band quantization (``codecs/guardband.py``): a whole-cache plan, token selection, per-group codes."""
