"""advtrain.smoothing"""
