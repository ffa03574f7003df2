"""Turning uploaded bytes into media and signals: safe decoding, fast PDQ, pHash."""
