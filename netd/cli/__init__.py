"""Entry points: parse, wire, run. No logic."""
