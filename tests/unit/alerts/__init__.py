"""Unit tests of the pure alert core: lifecycle, CAP, JSON, subscriptions, signing, backoff."""
