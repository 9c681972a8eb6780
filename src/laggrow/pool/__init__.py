"""A pool of grown candidates: its config (`config`), the vmapped step that trains them together
(`step`), probe and train-final (`probe`), and the records they write (`records`)."""
