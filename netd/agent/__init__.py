"""Long-running loops: observe, decide (netd.core), apply (netd.adapters)."""
