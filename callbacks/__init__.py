"""Lightning callbacks of advtrain (fit patch codebooks, log robustness curves)."""
