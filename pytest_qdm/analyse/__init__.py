"""Step 4: what is derived from the pass and from forwards on a fixed token set: perplexity,
SAE fit and transfer, matched pruning, overlap, predictor, stability, SAE pruning.
"""
