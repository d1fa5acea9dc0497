"""KVQuant 2 / 3 / 4 bit (``codecs/kvquant.py``): NF codebooks, dense-and-sparse outliers, pre-RoPE keys."""
