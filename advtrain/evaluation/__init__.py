"""advtrain.evaluation"""
