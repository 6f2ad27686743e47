"""`gemma bench`: measure speculative vs plain decoding on this machine, and tune it."""
