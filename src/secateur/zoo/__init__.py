"""The built-in world: datasets, model factories, and the baseline recipes that train them."""
