"""A pool of grown candidates: its spec (`spec`), the vmapped step that trains them together
(`step`), probe and train-final (`trainer`), successive halving trained (`halving_trainer`), and
the records they write (`records`)."""
