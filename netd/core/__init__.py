"""Pure decisions: no I/O, no clock or RNG of their own (both are passed in)."""
