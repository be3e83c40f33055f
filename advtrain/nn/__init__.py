"""Model plumbing shared by every layer above: layer access by module path (``layers.py``: forward
hooks, taps for ``autograd.grad``) and the one eval-mode / ``requires_grad`` guard (``state.py``).
Imports nothing of advtrain."""
