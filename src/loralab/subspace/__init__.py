"""Intrinsic-dimension training: random projections and the subspace reparameterisation."""
