"""`loralab compose`'s method names — apart from the composition code, so the command line lists them without
importing torch."""

METHODS = ("cat", "svd", "ties", "dare")
