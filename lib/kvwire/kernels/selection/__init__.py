"""Token selection (``codecs/selection.py``): StreamingLLM, H2O, SnapKV, PyramidKV, key norm."""
