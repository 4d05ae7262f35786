"""What the nodes receive and how the program reaches them: rendered texts, seeds, identities, keys."""
