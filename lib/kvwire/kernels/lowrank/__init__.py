"""Low rank (``codecs/svd.py``): runtime SVD factors of each head, float or int4."""
