"""Tensor operations shared by attacks, defenses, evaluation and training (norms, projections, 8-bit
quantization): below every other layer, importing none of them."""
