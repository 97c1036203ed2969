"""Plain helpers the tests share (fixtures stay in the conftest.py files)."""
