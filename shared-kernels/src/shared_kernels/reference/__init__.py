"""Plain-PyTorch references: the oracle of every test and the any-device fallback."""
