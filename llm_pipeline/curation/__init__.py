"""Curation library code the corpus stages use: reading sources (readers, formats), and later cleaning, PII and dedup."""
