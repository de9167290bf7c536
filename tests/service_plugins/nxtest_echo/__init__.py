"""Test service ``echo`` (see plugin.py)."""
