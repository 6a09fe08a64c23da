"""`make demo` (python -m demo) and the real text it and the benches use: outside the library, not in the wheel."""
