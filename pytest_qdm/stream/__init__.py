"""Step 3: the one streaming pass (reference once per batch, every condition on the same
batch) with mergeable float64 statistics and token lenses.
"""
