"""Data: a Monte-Carlo-annotated corpus in, a training subset out.

`visualprm400k` reads the raw layout → `scoring` adds the Balanced-Information Score → `selection` keeps the top
rollouts per source → `formats` writes the subset (`internvl` writes, and reads back for training, the reference
code's conversation JSONL; `prompt` defines the PRM prompt they share with the model) → `dataset_card` publishes it
on the Hub; `plots` draws the selection statistics and `sample` writes the embedded sample corpus and benchmark.
"""
