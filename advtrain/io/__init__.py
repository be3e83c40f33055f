"""Reading and writing files: the one atomic write and the one-run-per-folder lock (``files.py``),
safetensors files with a kind, metadata and a content checksum, bound to a network (``artifacts.py``),
the weights content hash and the finite check of loaded tensors (``fingerprint.py``). Imports nothing
of advtrain outside ``io``."""
