"""Small feature-space files for tests: an untrained (seeded) style encoder and decoder, cached in
.cache/tests (random weights: they exercise the attack's machinery, not its strength)."""
from __future__ import annotations

from pathlib import Path

import torch

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tests"


def untrained_style_pair(seed: int = 0) -> dict[str, str]:
    """{"encoder": path, "decoder": path} of a seeded untrained encoder and its decoder."""
    from advtrain.featspace.decoder import Decoder
    from advtrain.featspace.encoder import Encoder, MnistVggMini

    enc_path, dec_path = CACHE / f"fsa_untrained_encoder_{seed}_v2.safetensors", CACHE / f"fsa_untrained_decoder_{seed}_v2.safetensors"
    if not (enc_path.is_file() and dec_path.is_file()):
        torch.manual_seed(seed)
        net = MnistVggMini()
        enc = Encoder(net, torch.zeros(net.out_channels), torch.ones(net.out_channels))
        enc.save(enc_path)
        Decoder(net.out_channels).save(dec_path, enc, steps=0)
    return {"encoder": str(enc_path), "decoder": str(dec_path)}
