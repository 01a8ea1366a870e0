"""Accounting: prices, request records, the recorder and stores, usage, metrics and quality."""
