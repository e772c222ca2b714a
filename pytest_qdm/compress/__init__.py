"""Step 2: the compressed conditions (RTN, group-wise RTN, pruning, deployed schemes,
candidates) as weight maps swapped into the model, and the grammar of their names.
"""
