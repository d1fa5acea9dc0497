"""identity (``codecs/identity.py``): raw K and V in their native dtype behind a section table."""
