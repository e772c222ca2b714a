"""Step 1 of the data flow: models, SAEs, presets, corpora and token sets, from the Hub or
local folders, with one offline policy (:mod:`.hub`).
"""
