"""Attack speed: overhead over the physical floor, and time against torchattacks/foolbox peers.

For each attack at 20 iterations on a fixed model and batch (C4 on 128 embedded-MNIST test
images; ``--cifar`` adds cifar_cnn on random 32x32 images), prints
  overhead = time / (time of as many plain forward+backward passes as the gradients it used)
(for 20-gradient attacks: 20 passes; target <= 1.15; each repeat times the attack and its floor
back to back), the same with the success mask read (``+success``: one more forward, run only when
a caller reads ``AttackResult.success``), and the time ratio ours / peer where a peer exists
(peers return images only, so the call is the like-for-like comparison; median of per-repeat
ratios, ours and the peer run back to back). Medians over repeats after a
warm-up. ``--clock cpu`` measures process CPU time, steadier on a shared machine.

    .venv/bin/python bench/attacks.py [--quick] [--threads 2] [--clock wall|cpu] [--cifar]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from advtrain.attacks import ATTACKS, build_attack  # noqa: E402
from advtrain.nn.state import frozen_eval  # noqa: E402
from advtrain.data import build_datamodule  # noqa: E402
from advtrain.models import build_model  # noqa: E402

STEPS = 20

#: our attack (name, options) -> peer factory (model -> callable(x, y) -> x_adv), or None
def _peers() -> dict[str, Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]] | None]:
    peers: dict = {}
    try:
        import torchattacks as ta
        peers["fgsm"] = lambda m: ta.FGSM(m, eps=0.1)
        peers["ifgsm"] = lambda m: ta.BIM(m, eps=0.1, alpha=0.02, steps=STEPS)
        peers["pgd_linf"] = lambda m: ta.PGD(m, eps=0.1, alpha=0.02, steps=STEPS, random_start=False)
        peers["pgd_l2"] = lambda m: ta.PGDL2(m, eps=1.5, alpha=0.3, steps=STEPS, random_start=False)
        peers["cw_l2"] = lambda m: ta.CW(m, c=1.0, steps=STEPS, lr=0.5)
        peers["apgd_linf"] = lambda m: ta.APGD(m, eps=0.1, steps=100)
        peers["apgd_linf eps.02"] = lambda m: ta.APGD(m, eps=0.02, steps=100)
    except ImportError:
        pass
    try:
        import foolbox as fb

        def fb_run(attack):
            def make(m):
                fm = fb.PyTorchModel(m, bounds=(0, 1))
                return lambda x, y: attack(fm, x, y, epsilons=None)[1]
            return make
        peers["ddn"] = fb_run(fb.attacks.DDNAttack(steps=STEPS))
        peers["deepfool"] = fb_run(fb.attacks.L2DeepFoolAttack(steps=STEPS, candidates=10, overshoot=0.02))
    except ImportError:
        pass
    try:  # transfer attacks at the NAA paper's T = 10, N = 30 (MNIST eps 0.2), C4's middle layer
        import torchattack as tk
        cpu, layer = torch.device("cpu"), "net.features.3"
        peers["mifgsm"] = lambda m: tk.MIFGSM(m, device=cpu, eps=0.2, steps=10)
        peers["naa"] = lambda m: tk.NAA(m, device=cpu, eps=0.2, steps=10, num_ens=30, feature_layer_cfg=layer)
        peers["fia"] = lambda m: tk.FIA(m, device=cpu, eps=0.2, steps=10, num_ens=30, feature_layer_cfg=layer)
    except ImportError:
        pass
    return peers


#: rows of the table: label -> (registry name, options)
ROWS: dict[str, tuple[str, dict]] = {
    "fgsm": ("fgsm", {"eps": 0.1}),
    "ifgsm": ("ifgsm", {"eps": 0.1, "alpha": 0.02, "steps": STEPS}),
    "pgd_linf": ("pgd_linf", {"eps": 0.1, "alpha": 0.02, "steps": STEPS, "random_start": False}),
    "pgd_l2": ("pgd_l2", {"eps": 1.5, "alpha": 0.3, "steps": STEPS}),
    "ddn": ("ddn", {"steps": STEPS}),
    "ddn quantized": ("ddn", {"steps": STEPS, "quantize": True}),
    "bp": ("bp", {"steps": STEPS}),
    "bp quantized": ("bp", {"steps": STEPS, "quantize": True}),
    "bp sphere": ("bp", {"steps": STEPS, "variant": "sphere"}),  # the default before switch (issue 21)
    "bp sphere quantized": ("bp", {"steps": STEPS, "variant": "sphere", "quantize": True}),
    "deepfool": ("deepfool", {"steps": STEPS}),
    "cw_l2 1x20": ("cw_l2", {"steps": STEPS, "search_steps": 1}),
    "qpgd_l2": ("qpgd_l2", {"eps": 1.5, "steps": STEPS}),
    "scw_l2 1x20": ("scw_l2", {"steps": STEPS, "search_steps": 1}),
    # AutoAttack's 100 steps; at eps 0.02 no image is fooled, so early stop saves nothing
    "apgd_linf": ("apgd_linf", {"eps": 0.1, "steps": 100}),
    "apgd_linf eps.02": ("apgd_linf", {"eps": 0.02, "steps": 100}),
    "mifgsm": ("mifgsm", {"eps": 0.2, "steps": 10}),
    "naa": ("naa", {"eps": 0.2, "steps": 10, "ens": 30, "noise": 0.0, "path": "torchattack"}),
    "fia": ("fia", {"eps": 0.2, "steps": 10, "ens": 30, "target": "prob"}),
}
PEER_OF = {"fgsm": "fgsm", "ifgsm": "ifgsm", "pgd_linf": "pgd_linf", "pgd_l2": "pgd_l2", "ddn": "ddn",
           "deepfool": "deepfool", "cw_l2 1x20": "cw_l2", "apgd_linf": "apgd_linf",
           "apgd_linf eps.02": "apgd_linf eps.02", "mifgsm": "mifgsm", "naa": "naa", "fia": "fia"}


CLOCK: Callable[[], float] = time.perf_counter


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def median_ratio(fn: Callable[[], object], floor: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median time of ``fn`` and median of time(fn) / time(floor), the two timed back to back in
    every repeat so that load changes on a shared machine affect both alike."""
    fn()
    floor()
    times, ratios = [], []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        t1 = CLOCK()
        floor()
        t2 = CLOCK()
        times.append(t1 - t0)
        ratios.append((t1 - t0) / (t2 - t1))
    return statistics.median(times), statistics.median(ratios)


def plain_passes(model: nn.Module, x: Tensor, y: Tensor, n: int) -> Callable[[], None]:
    """``n`` forward+backward passes to the input, parameters frozen: the physical floor."""
    def run() -> None:
        with frozen_eval(model):
            for _ in range(n):
                xi = x.detach().requires_grad_(True)
                loss = nn.functional.cross_entropy(model(xi), y, reduction="sum")
                torch.autograd.grad(loss, xi)
    return run


def bench_model(label: str, model: nn.Module, x: Tensor, y: Tensor, repeats: int, rows: list[str]) -> None:
    peers = _peers()
    t_pass = median_time(plain_passes(model, x, y, 1), max(repeats, 5) * 2)
    print(f"\n{label}: batch {tuple(x.shape)}, one forward+backward {t_pass * 1e3:.1f} ms")
    print(f"{'attack':<15}{'grads':>6}{'time s':>9}{'overhead':>10}{'+success':>10}{'peer s':>9}{'ours/peer':>10}")
    for row in rows:
        name, options = ROWS[row]
        if name not in ATTACKS:
            continue
        attack = build_attack(name, **options)
        grads = attack(model, x, y).grads
        floor = plain_passes(model, x, y, grads)
        t, overhead = median_ratio(lambda: attack(model, x, y), floor, repeats)
        _, overhead_s = median_ratio(lambda: attack(model, x, y).success, floor, repeats)
        peer_make = peers.get(PEER_OF.get(row, ""))
        if peer_make is not None:  # timed back to back with ours, like the floor
            peer = peer_make(model)
            t_peer = median_time(lambda: peer(x, y), repeats)
            _, vs_peer = median_ratio(lambda: attack(model, x, y), lambda: peer(x, y), repeats)
            peer_cols = f"{t_peer:>9.3f}{vs_peer:>10.2f}"
        else:
            peer_cols = f"{'-':>9}{'-':>10}"
        print(f"{row:<15}{grads:>6}{t:>9.3f}{overhead:>10.2f}{overhead_s:>10.2f}{peer_cols}", flush=True)


def mnist_c4(batch: int) -> tuple[nn.Module, Tensor, Tensor, str]:
    """The tests' trained C4 (trained and cached when missing: peers stop early on a random one)."""
    from conftest import cached_c4

    torch.manual_seed(0)
    model, source = cached_c4()
    dm = build_datamodule("mnist_embedded", batch_size=batch, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(batch)])
    return model.eval(), torch.stack(xs), torch.tensor(ys), source


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and attacks, smaller batch")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--batch", type=int, default=None, help="MNIST batch size (default 128, quick 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 1)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or this process's CPU time (steadier on a loaded machine)")
    p.add_argument("--cifar", action="store_true", help="also cifar_cnn on 16 random 32x32 images")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), metavar="ROW", default=None,
                   help=f"only these rows (default: all; --quick: 4); valid: {', '.join(ROWS)}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    batch = args.batch or (32 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 5)
    rows = args.rows or (["fgsm", "pgd_l2", "ddn", "bp quantized"] if args.quick else list(ROWS))
    model, x, y, source = mnist_c4(batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"median of {repeats} after warm-up; overhead = time / (grads x plain forward+backward)")
    print(f"model: {source}")
    bench_model("C4 on MNIST", model, x, y, repeats, rows)
    if args.cifar:
        torch.manual_seed(0)
        cifar = build_model("cifar_cnn", num_classes=10).eval()
        xc = torch.rand(16, 3, 32, 32)
        with torch.no_grad():
            yc = cifar(xc).argmax(1)
        bench_model("cifar_cnn (random init), random images", cifar, xc, yc, repeats, rows)


if __name__ == "__main__":
    main()
