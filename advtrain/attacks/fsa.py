"""FSA: feature-space attack by style perturbation, "feature augmentation" (Xu et al., arXiv
2004.12385, Sec. 3.2.2 Eq. 9; FEATURE_ATTACKS.md section 2).

Per image and encoder channel c the attack moves the content feature's spatial std and mean:

    t = (B - mu) e^{tau_s} + mu e^{tau_m},   |tau_s|, |tau_m| <= ln(bound)   (Eq. 9, the code's sign(mu)|mu'|)

and decodes x' = clamp(f^-1(t), 0, 1). Adam (lr 1e-2, beta1 0.5, the code's) minimises
content(f(x'), t) + adv_weight * hinge(x') over tau (clipped to the log bound after every step).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..featspace.decoder import Decoder, channel_stats
from ..featspace.encoder import Encoder
from .base import Attack, AttackContext
from ..ops.checks import check_count, check_positive
from .losses import is_adversarial, margin_loss
from ..ops.norms import quantize as quantize_8bit
from .registry import register_attack


MISSING_FILES = ("fsa needs encoder and decoder files: python -m advtrain.featspace decoder --config "
                 "configs/featspace_mnist_decoder.yaml (run_suite fits them on first use given an out_dir)")


def _load_pair(encoder: str | Encoder, decoder: str | Decoder) -> tuple[Encoder, Decoder]:
    enc = encoder if isinstance(encoder, Encoder) else Encoder.load(encoder)
    if isinstance(decoder, Decoder):
        return enc, decoder
    return enc, Decoder.load(decoder, enc)


@register_attack("fsa")
class FSA(Attack):
    """Style perturbation through an encoder/decoder pair (files of ``python -m advtrain.featspace``).

    Args:
        encoder, decoder: safetensors files (the decoder must have been trained for this encoder),
            or loaded :class:`Encoder` / :class:`Decoder` objects.
        bound: p (the paper's e^epsilon), the largest factor on each channel's std and |mean| (1.5 untargeted in
            the paper, 2 targeted); > 1.
        steps, lr: Adam iterations and learning rate (beta1 = 0.5).
        adv_weight, confidence: weight and kappa of the hinge (per sample, not the code's
            batch-size-scaled weight).

    No gradient clipping (the paper's 10/sqrt(dim) and the code's dim^(1/4)/sqrt(10) differ; Adam's
    per-coordinate normalisation makes a global clip nearly a no-op). Returns per sample the
    first misclassified decoded iterate, then the one of least content loss; x unchanged when none
    is (the decoded unperturbed image carries the decoder's reconstruction error, so it is not x).
    With ``quantize`` the model sees the rounded decoded image (straight-through gradient).
    Cost: one gradient per step (through decoder, classifier and encoder).
    """

    family = "unrestricted"
    required_files = ("encoder", "decoder")  # run_suite fits missing ones on first use (featspace/provision.py)
    default_loss = "margin"

    def __init__(self, encoder: str | Encoder | None = None, decoder: str | Decoder | None = None,
                 bound: float = 1.5, steps: int = 200, lr: float = 0.01, adv_weight: float = 10.0,
                 confidence: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        check_count("steps", steps)
        check_positive("lr", lr)
        check_positive("adv_weight", adv_weight)
        check_positive("confidence", confidence, allow_zero=True)
        if not isinstance(bound, (int, float)) or not bound > 1.0:
            raise ValueError(f"bound must be > 1 (the factor on channel std and mean), got {bound!r}")
        self.encoder = str(encoder) if isinstance(encoder, Path) else encoder
        self.decoder = str(decoder) if isinstance(decoder, Path) else decoder
        # files given: loaded and checked now (a decoder of another encoder is refused); missing: an error
        # when the attack is called, so a suite entry without them validates and run_suite fits them on first use
        self._pair = None if encoder is None or decoder is None else _load_pair(self.encoder, self.decoder)
        self.bound, self.steps, self.lr = float(bound), int(steps), float(lr)
        self.adv_weight, self.confidence = float(adv_weight), float(confidence)

    @property
    def log_bound(self) -> float:
        return float(torch.log(torch.tensor(self.bound, dtype=torch.float64)))

    def _run(self, ctx: AttackContext) -> Tensor:
        if self._pair is None:
            raise ValueError(MISSING_FILES)
        enc, dec = self._pair
        enc.to(ctx.x.device), dec.to(ctx.x.device)
        x = ctx.x
        with torch.no_grad():
            b = enc(x)
            mu, _ = channel_stats(b)
        n, c = b.shape[:2]
        tau = torch.zeros(2, n, c, 1, 1, device=x.device, requires_grad=True)  # (tau_s, tau_m)
        opt = torch.optim.Adam([tau], lr=self.lr, betas=(0.5, 0.999))
        best = x.clone()
        best_content = torch.full((n,), float("inf"), device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for i in range(self.steps + 1):
            last = i == self.steps
            with torch.set_grad_enabled(not last):
                t = (b - mu) * tau[0].exp() + mu * tau[1].exp()
                x_r = dec(t)
                if self.quantize:
                    x_r = x_r + (quantize_8bit(x_r) - x_r).detach()
                logits = ctx.forward(x_r)
                content = ((enc(x_r) - t) ** 2).mean(dim=(2, 3)).sum(1)
                hinge = margin_loss(logits, ctx.y, ctx.targets, self.confidence)
            adv = is_adversarial(logits.detach(), ctx.y, ctx.targets)
            better = adv & (~found | (content.detach() < best_content))
            best[better] = x_r.detach()[better].to(x.dtype)
            best_content = torch.where(better, content.detach(), best_content)
            found |= adv
            if last:
                break
            opt.zero_grad(set_to_none=True)
            (content + self.adv_weight * hinge).sum().backward(inputs=[tau])
            opt.step()
            with torch.no_grad():
                tau.clamp_(-self.log_bound, self.log_bound)
        self.last_scalings = tau.detach().exp()  # diagnostics: (std, mean) factors, [2, B, C, 1, 1]
        return best
