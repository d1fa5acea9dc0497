"""File-level stages of the study: each reads inputs from paths, calls the library, writes outputs.

The workflow's scripts call exactly one of these; nothing here knows about Snakemake.
"""
