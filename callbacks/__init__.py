"""Lightning callbacks of advtrain (fit patch codebooks, log robustness curves, EMA weights, catastrophic-overfitting guard)."""
