"""The style attack's decoder f^-1 trained to invert the encoder under AdaIN (Xu et al. Sec. 3.2.1,
Eq. 5-8; FEATURE_ATTACKS.md 2.1, 2.3).

Mirror of the encoder: conv3x3(C->h)+ReLU, nearest x2, conv3x3(h->h)+ReLU, conv3x3(h->1), reflection
padding, no normalization, clamped to [0, 1]. Trained on same-class pairs (x_p, x_q): the content
of x_p with the channel statistics of x_q (AdaIN, Eq. 6) is decoded to x_r; the loss is the content
loss ||f(x_r) - B_o||^2 (Eq. 7, sum over channels of the spatial mean) + w * the style loss on
mean/std of the style layers (Eq. 8).
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..nn.layers import LayerTap
from ..ops.checks import check_count, check_positive
from ..io.artifacts import check_bound_to, load_artifact, save_artifact
from .encoder import Encoder

KIND = "fsa-decoder"
VAR_STABILITY = 1e-5  # sigma = sqrt(var + 1e-5), as the official code


def channel_stats(b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel spatial mean and std (Eq. 5), shaped [B, C, 1, 1]."""
    mu = b.mean(dim=(2, 3), keepdim=True)
    return mu, (b.var(dim=(2, 3), keepdim=True, unbiased=False) + VAR_STABILITY).sqrt()


def adain(content: Tensor, style: Tensor) -> Tensor:
    """Eq. 6: sigma(style) (content - mu(content)) / sigma(content) + mu(style)."""
    mc, sc = channel_stats(content)
    ms, ss = channel_stats(style)
    return ss * (content - mc) / sc + ms


class Decoder(nn.Module):
    def __init__(self, in_channels: int = 64, hidden: int = 32, out_channels: int = 1) -> None:
        super().__init__()
        self.in_channels, self.hidden, self.out_channels = in_channels, hidden, out_channels
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(in_channels, hidden, 3), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.ReflectionPad2d(1), nn.Conv2d(hidden, hidden, 3), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(hidden, out_channels, 3))

    def forward(self, b: Tensor) -> Tensor:
        return self.body(b).clamp(0.0, 1.0)

    def save(self, path: str | Path, encoder: Encoder, steps: int) -> Path:
        return save_artifact(path, dict(self.state_dict()), KIND, {
            "model_hash": encoder.hash, "in_channels": self.in_channels, "hidden": self.hidden,
            "out_channels": self.out_channels, "steps": steps})

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder) -> "Decoder":
        """Load; refuses a decoder trained for another encoder."""
        tensors, meta = load_artifact(path, KIND)
        check_bound_to(meta, encoder.net, "the decoder", path)
        dec = cls(int(meta["in_channels"]), int(meta["hidden"]), int(meta["out_channels"]))
        dec.load_state_dict(tensors)
        return dec.eval().requires_grad_(False)


class SameClassPairs(Dataset):
    """(x_p, x_q) with x_q drawn uniformly among the images of x_p's class (the code's data_mode=2)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y
        self.by_class = {int(c): (y == c).nonzero().flatten() for c in y.unique()}

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        pool = self.by_class[int(self.y[i])]
        return self.x[i], self.x[pool[torch.randint(len(pool), (1,))]].squeeze(0)  # global RNG: seeded


def style_content_loss(encoder: Encoder, x_r: Tensor, target: Tensor, x_style: Tensor,
                       style_weight: float) -> tuple[Tensor, Tensor]:
    """(content loss Eq. 7, style loss Eq. 8) of decoded images ``x_r`` (batch means)."""
    layers = list(encoder.net.style_layers)
    with LayerTap(encoder.net, layers) as tap:
        encoder.net.features(x_r)
    rec = {k: tap[k] for k in layers}
    with torch.no_grad(), LayerTap(encoder.net, layers) as tap:
        encoder.net.features(x_style)
    ref = {k: tap[k] for k in layers}
    content = ((rec["features"] - target) ** 2).mean(dim=(2, 3)).sum(1).mean()
    style = sum((((channel_stats(rec[k])[0] - channel_stats(ref[k])[0]) ** 2).sum((1, 2, 3))
                 + ((channel_stats(rec[k])[1] - channel_stats(ref[k])[1]) ** 2).sum((1, 2, 3))).mean()
                for k in layers)
    return content, style_weight * style


class StyleDecoderModule(pl.LightningModule):
    """Trains a :class:`Decoder` for a frozen encoder file (Adam, Eq. 7 + w Eq. 8)."""

    def __init__(self, encoder: str, hidden: int = 32, lr: float = 1e-3, style_weight: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = Encoder.load(encoder)
        self.decoder = Decoder(self.encoder.net.out_channels, hidden, self.encoder.net.features[0].in_channels)

    def training_step(self, batch: tuple[Tensor, Tensor], _: int) -> Tensor:
        x_p, x_q = batch
        self.encoder.to(self.device)
        with torch.no_grad():
            b_o = adain(self.encoder(x_p), self.encoder(x_q))
        content, style = style_content_loss(self.encoder, self.decoder(b_o), b_o, x_q, self.hparams.style_weight)
        loss = content + style
        self.log_dict({"content": content, "style": style}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.decoder.parameters(), lr=self.hparams.lr)


def fit_style_decoder(encoder: str | Path, out: str | Path, x: Tensor, y: Tensor, steps: int = 1500,
                      batch_size: int = 64, lr: float = 1e-3, hidden: int = 32, style_weight: float = 1.0,
                      seed: int = 0, checkpoint_every: int = 100, progress: bool = True) -> Path:
    """Train the decoder for ``steps`` on same-class pairs of (x, y); checkpoints (``last.ckpt``
    beside ``out``) every ``checkpoint_every`` steps, resumed when present; writes ``out``."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    check_count("steps (an untrained decoder is no decoder)", steps)
    for name, value in (("batch_size", batch_size), ("hidden", hidden), ("checkpoint_every", checkpoint_every)):
        check_count(name, value)
    check_positive("lr", lr)
    check_positive("style_weight", style_weight, allow_zero=True)
    if len(y) < batch_size:
        raise ValueError(f"the decoder needs at least batch_size={batch_size} training images, got {len(y)}")
    out = Path(out)
    ckpt_dir = out.with_name(out.stem + "_ckpt")
    pl.seed_everything(seed, verbose=False)
    module = StyleDecoderModule(str(encoder), hidden=hidden, lr=lr, style_weight=style_weight)
    loader = DataLoader(SameClassPairs(x, y), batch_size=batch_size, shuffle=True, drop_last=True)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=progress, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=str(ckpt_dir),
                         callbacks=[ModelCheckpoint(dirpath=str(ckpt_dir), every_n_train_steps=checkpoint_every,
                                                    save_last=True, save_top_k=0)])
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None)
    return module.decoder.save(out, module.encoder, trainer.global_step)
