"""Feature-space components of the unrestricted attacks (FEATURE_ATTACKS.md sections 1-2):
D2B's per-neuron activation statistics and quantile bound (``stats.py``, ``bound.py``), the style
attack's encoder and AdaIN decoder (``encoder.py``, ``decoder.py``), all saved as safetensors
bound to the network they were fitted on (``advtrain/io/artifacts.py``); fitted on a dataset's training split
by ``fitting.py`` (for the CLI, ``python -m advtrain.featspace``, and fit-on-first-use, ``provision.py``)."""
