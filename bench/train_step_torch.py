#!/usr/bin/env python3
"""The SlotCon training step in plain PyTorch, written here from docs/method.md and the authors'
model (CVMI-Lab/SlotCon, models/slotcon.py), for two jobs:

  bench     images/s of the full step (teacher EMA, student + teacher forward, loss, backward,
            LARS, center update) at the authors' per-GPU scale: ResNet-50, 224 px, batch 64,
            K 256, channels_last, bf16 autocast. The baseline for bench_train_step; prints one
            RESULT line. Prints a line and exits 0 when no GPU is present (unless --device cpu).
  init      write a freshly initialised model as a state file with the reference names (§10),
            for `slotcon train --init`.
  replay    run N steps on a recorded batch (`--batch-file`, same format as the engine's) from an
            init state, with the config recorded in an engine checkpoint, and write the final
            state: the reference the engine's own replay is compared against.
  compare   the engine's state after the replay, and PyTorch float32's, against PyTorch float64's
            (the truth), tensor by tensor, the error relative to how far the truth moved each
            tensor; median, 90th percentile and worst over several seeds.
  checksum  per group of tensors, the norm of the move from the init state and its projection
            on a fixed sign pattern: what tests/apps/test_train.cpp pins.

scripts/compare_torch_step.sh ties init / replay / compare to `slotcon train`.

Only torch and numpy are needed (torchvision's roi_align is used when present, else an
equivalent written here). Single process: the all-gathers of the distributed step are identity.
"""
import argparse
import json
import math
import statistics
import struct
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # keep gpu_check's loop alive on machines without torch
    print(f"train_step_torch: PyTorch unavailable ({e})")
    sys.exit(0)

# ---------------------------------------------------------------------------- safetensors I/O
_DT = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
       "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
_DT_NAME = {v: k for k, v in _DT.items()}


def load_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, v in header.items():
        a, b = v["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=_DT[v["dtype"]]) if b > a else \
            torch.empty(0, dtype=_DT[v["dtype"]])
        out[name] = t.reshape(v["shape"]).clone()
    return out, meta


def save_st(path, tensors, meta=None):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DT_NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------- networks (§1)
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inp, planes, stride, down):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = down

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + r)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inp, planes, stride, down):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = down

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + r)


class ResNet(nn.Module):
    """torchvision layout, no pooling and no fc: returns the stride-32 map."""

    def __init__(self, depth):
        super().__init__()
        block, counts = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                         50: (Bottleneck, [3, 4, 6, 3])}[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inp = 64
        for i, (planes, n) in enumerate(zip([64, 128, 256, 512], counts)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or inp != planes * block.expansion:
                    down = nn.Sequential(nn.Conv2d(inp, planes * block.expansion, 1, s, bias=False),
                                         nn.BatchNorm2d(planes * block.expansion))
                layers.append(block(inp, planes, s, down))
                inp = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.out_channels = inp
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        last = "bn3.weight" if block is Bottleneck else "bn2.weight"
        for name, p in self.named_parameters():
            if name.endswith(last):
                nn.init.zeros_(p)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _mlp(kind, d_in, d_hidden, d_out):
    lin = (lambda a, b: nn.Conv2d(a, b, 1)) if kind == "2d" else nn.Linear
    bn = nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d
    layers = [lin(d_in, d_hidden), bn(d_hidden), nn.GELU(), lin(d_hidden, d_hidden), bn(d_hidden),
              nn.GELU(), lin(d_hidden, d_out)]
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class Head(nn.Module):
    def __init__(self, kind, d_in, d_hidden, d_out):
        super().__init__()
        self.mlp = _mlp(kind, d_in, d_hidden, d_out)

    def forward(self, x):
        return self.mlp(x)


class Grouping(nn.Module):
    def __init__(self, K, D):
        super().__init__()
        self.slot_embed = nn.Embedding(K, D)  # init N(0, 1)

    def forward(self, x, temp):
        """x (B, D, h, w) -> slots (B, K, D), dots (B, K, h, w)   (§2)"""
        protos = F.normalize(self.slot_embed.weight, dim=1)
        dots = torch.einsum("kd,bdhw->bkhw", protos, F.normalize(x, dim=1))
        attn = (dots / temp).softmax(dim=1) + 1e-6
        slots = torch.einsum("bdhw,bkhw->bkd", x, attn / attn.sum(dim=(2, 3), keepdim=True))
        return slots, dots


def roi_align_same_size(x, boxes):
    """RoIAlign, aligned=True, adaptive sampling, output the input's size (§3). boxes (N, 4) in
    map pixels (x1, y1, x2, y2), one per image."""
    try:
        import torchvision
        idx = torch.arange(x.shape[0], device=x.device, dtype=boxes.dtype).view(-1, 1)
        return torchvision.ops.roi_align(x, torch.cat([idx, boxes], 1), x.shape[-2:], aligned=True)
    except ImportError:
        pass
    N, C, H, W = x.shape
    size = boxes[:, 2:] - boxes[:, :2]
    if bool(((size > 0) & (size <= torch.tensor([W, H], dtype=size.dtype, device=size.device))).all()):
        return _roi_align_one_sample(x, boxes)
    return _roi_align_loop(x, boxes)


def _roi_align_one_sample(x, boxes):
    """roi_align_same_size when every box is at most the map's size: one bilinear sample per bin,
    all images at once."""
    N, C, H, W = x.shape

    def axis(start, length, size):  # (N,) -> (N, size) sample positions, torchvision's rules
        i = torch.arange(size, device=x.device, dtype=x.dtype).view(1, -1)
        p = start.view(-1, 1) - 0.5 + (i + 0.5) * (length.view(-1, 1) / size)
        valid = (p >= -1.0) & (p <= size)
        p = p.clamp(min=0.0)
        lo = p.floor().long().clamp(max=size - 1)
        hi = (lo + 1).clamp(max=size - 1)
        frac = torch.where(lo >= size - 1, torch.zeros_like(p), p - lo.to(p.dtype))
        return lo, hi, frac, valid

    b = boxes.to(x.dtype)
    ylo, yhi, ly, vy = axis(b[:, 1], b[:, 3] - b[:, 1], H)
    xlo, xhi, lx, vx = axis(b[:, 0], b[:, 2] - b[:, 0], W)
    n = torch.arange(N, device=x.device).view(N, 1, 1)

    def at(yi, xi):  # (N, H, W, C)
        return x[n, :, yi[:, :, None], xi[:, None, :]]

    ly, lx = ly[:, :, None, None], lx[:, None, :, None]
    v = (at(ylo, xlo) * (1 - ly) * (1 - lx) + at(ylo, xhi) * (1 - ly) * lx +
         at(yhi, xlo) * ly * (1 - lx) + at(yhi, xhi) * ly * lx)
    v = v * (vy[:, :, None] & vx[:, None, :]).to(v.dtype)[..., None]
    return v.permute(0, 3, 1, 2)


def _roi_align_loop(x, boxes):
    """roi_align_same_size for any boxes: the adaptive grid, one image at a time."""
    N, C, H, W = x.shape
    out = []
    for n in range(N):  # adaptive grid: ceil(box / bins) samples per bin, per box
        x1, y1, x2, y2 = [float(v) for v in boxes[n]]
        gh, gw = max(math.ceil((y2 - y1) / H), 1), max(math.ceil((x2 - x1) / W), 1)

        def axis(start, length, size, g):
            b = length / size
            i = torch.arange(size, device=x.device, dtype=x.dtype).view(-1, 1)
            j = torch.arange(g, device=x.device, dtype=x.dtype).view(1, -1)
            p = (start - 0.5 + i * b + (j + 0.5) * b / g).reshape(-1)
            valid = (p >= -1.0) & (p <= size)
            p = p.clamp(min=0.0)
            lo = p.floor().long().clamp(max=size - 1)
            hi = (lo + 1).clamp(max=size - 1)
            at_end = lo >= size - 1
            frac = torch.where(at_end, torch.zeros_like(p), p - lo.to(p.dtype))
            return lo, hi, frac, valid

        ylo, yhi, ly, vy = axis(y1, y2 - y1, H, gh)
        xlo, xhi, lx, vx = axis(x1, x2 - x1, W, gw)
        f = x[n]
        v = (f[:, ylo][:, :, xlo] * ((1 - ly)[:, None] * (1 - lx)[None, :]) +
             f[:, ylo][:, :, xhi] * ((1 - ly)[:, None] * lx[None, :]) +
             f[:, yhi][:, :, xlo] * (ly[:, None] * (1 - lx)[None, :]) +
             f[:, yhi][:, :, xhi] * (ly[:, None] * lx[None, :]))
        v = v * (vy[:, None] & vx[None, :]).to(v.dtype)
        out.append(v.view(C, H, gh, W, gw).mean(dim=(2, 4)))
    return torch.stack(out)


def _head(t):
    """The head runs in float32 whatever the backbone's autocast dtype (float64 stays)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class SlotCon(nn.Module):
    """Module tree and names = the reference state_dict (§10)."""

    def __init__(self, cfg):
        super().__init__()
        depth = {"resnet18": 18, "resnet34": 34, "resnet50": 50}[cfg["arch"]]
        self.cfg = cfg
        self.encoder_q, self.encoder_k = ResNet(depth), ResNet(depth)
        C, H, D, K = (self.encoder_q.out_channels, cfg["dim_hidden"], cfg["dim_out"],
                      cfg["num_prototypes"])
        self.projector_q, self.projector_k = Head("2d", C, H, D), Head("2d", C, H, D)
        self.grouping_q, self.grouping_k = Grouping(K, D), Grouping(K, D)
        self.predictor_slot = Head("1d", D, H, D)
        self.register_buffer("center", torch.zeros(1, K))
        for q, k in self._pairs():
            k.data.copy_(q.data)
            k.requires_grad = False

    def _pairs(self):
        for a, b in (("encoder_q", "encoder_k"), ("projector_q", "projector_k"),
                     ("grouping_q", "grouping_k")):
            yield from zip(getattr(self, a).parameters(), getattr(self, b).parameters())

    @torch.no_grad()
    def momentum_update(self, m):
        for q, k in self._pairs():
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)

    @staticmethod
    def invaug(x, coords, flags):
        N, _, H, W = x.shape
        boxes = coords.to(x.dtype) * torch.tensor([W, H, W, H], dtype=x.dtype, device=x.device)
        a = roi_align_same_size(x, boxes)
        return torch.where(flags.bool().view(N, 1, 1, 1), a.flip(-1), a)

    def self_distill(self, q, k):
        q = F.log_softmax(q / self.cfg["student_temp"], dim=-1)
        k = F.softmax((k - self.center) / self.cfg["teacher_temp"], dim=-1)
        return torch.sum(-k * q, dim=-1).mean()

    def ctr_loss(self, q, k, score_q, score_k):
        tau = self.cfg["contrast_temp"]
        q = q.flatten(0, 1)
        k = F.normalize(k.flatten(0, 1), dim=1)

        def present(score):  # (B, K): prototype is the arg-max of some pixel
            hit = torch.zeros_like(score).scatter_(1, score.argmax(1, keepdim=True), 1)
            return (hit.sum(-1).sum(-1) > 0).long()

        mq, mk = present(score_q), present(score_k)
        idx_q = (mq * mk).view(-1).nonzero().squeeze(-1)
        mk = mk.view(-1)
        idx_k = mk.nonzero().squeeze(-1)
        p = F.normalize(self.predictor_slot(q[idx_q]), dim=1)
        logits = p @ k[idx_k].t() / tau
        labels = mk.cumsum(0)[idx_q] - 1
        return F.cross_entropy(logits.float(), labels) * (2 * tau)

    def forward(self, crops, coords, flags, momentum):
        cfg, w = self.cfg, self.cfg["group_loss_weight"]
        tt = cfg["teacher_temp"]
        x = [self.projector_q(self.encoder_q(c)) for c in crops]
        with torch.no_grad():
            self.momentum_update(momentum)  # before the teacher's forward (§6)
            y = [self.projector_k(self.encoder_k(c)) for c in crops]
        (q1, sq1), (q2, sq2) = [self.grouping_q(_head(v), tt) for v in x]
        qa = [self.invaug(s, coords[i], flags[i]) for i, s in enumerate((sq1, sq2))]
        with torch.no_grad():
            (k1, sk1), (k2, sk2) = [self.grouping_k(_head(v), tt) for v in y]
            ka = [self.invaug(s, coords[i], flags[i]) for i, s in enumerate((sk1, sk2))]
        flat = lambda t: t.permute(0, 2, 3, 1).flatten(0, 2)
        group = w * self.self_distill(flat(qa[0]), flat(ka[1])) + \
            w * self.self_distill(flat(qa[1]), flat(ka[0]))
        with torch.no_grad():
            t = flat(torch.cat([sk1, sk2]))
            m = cfg["center_momentum"]
            self.center.copy_(self.center * m + t.mean(0, keepdim=True) * (1 - m))
        contrast = (1 - w) * self.ctr_loss(q1, k2, sq1, sk2) + \
            (1 - w) * self.ctr_loss(q2, k1, sq2, sk1)
        return group + contrast, group.detach(), contrast.detach()


class LARS:
    """As the authors' utils/lars.py (Barlow Twins): weight decay and the trust ratio only for
    tensors with more than one dimension; mu <- momentum mu + update; p <- p - lr mu."""

    def __init__(self, params, weight_decay, momentum, eta=0.001, lars=True):
        self.params, self.wd, self.mom, self.eta, self.lars = list(params), weight_decay, \
            momentum, eta, lars
        self.mu = [torch.zeros_like(p) for p in self.params]
        self.lr = 0.0

    @torch.no_grad()
    def step(self):
        for p, mu in zip(self.params, self.mu):
            if p.grad is None:
                continue
            d = p.grad
            if self.lars:
                if p.ndim != 1:
                    d = d.add(p, alpha=self.wd)
                    pn, un = torch.norm(p), torch.norm(d)
                    one = torch.ones_like(pn)
                    q = torch.where(pn > 0, torch.where(un > 0, self.eta * pn / un, one), one)
                    d = d.mul(q)
            else:  # SGD with momentum and weight decay (torch.optim.SGD semantics)
                d = d.add(p, alpha=self.wd)
            mu.mul_(self.mom).add_(d)
            p.add_(mu, alpha=-self.lr)


def lr_at(s, S, W, peak, mult, final=1e-6):
    if s < W:
        start = peak / mult
        return start + (peak - start) * s / W
    span = S - W
    if span <= 0:
        return peak
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * (s - W) / span))


def momentum_at(s, S, m0):
    return 1 - (1 - m0) * (math.cos(math.pi * s / S) + 1) / 2


def config_from(path):
    """The run's config as the engine recorded it in a checkpoint's metadata."""
    _, meta = load_st(path)
    if "config" not in meta:
        sys.exit(f"{path}: no 'config' in __metadata__ (not an engine checkpoint)")
    return json.loads(meta["config"])


# ---------------------------------------------------------------------------- commands
def cmd_init(a):
    cfg = config_from(a.config_from)
    torch.manual_seed(a.seed)
    model = SlotCon(cfg)
    save_st(a.out, {k: v for k, v in model.state_dict().items()})
    print(f"init: {cfg['arch']} K={cfg['num_prototypes']} -> {a.out}")


def cmd_replay(a):
    torch.use_deterministic_algorithms(False)
    cfg = config_from(a.config_from)
    dt = torch.float64 if a.f64 else torch.float32
    model = SlotCon(cfg)
    state, _ = load_st(a.init)
    model.load_state_dict({k: v for k, v in state.items()}, strict=False)
    model = model.to(dt).train()
    batch, _ = load_st(a.batch_file)
    crops = [batch[f"crops.{v}"].to(dt) for v in range(2)]
    coords = [batch[f"coords.{v}"].to(dt) for v in range(2)]
    flags = [batch[f"flags.{v}"] for v in range(2)]
    B = crops[0].shape[0]
    student = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = LARS(student, cfg["weight_decay"], cfg["momentum"], lars=cfg["optimizer"] == "lars")
    # one batch per "epoch", as the engine's --batch-file replay counts it
    S = cfg["epochs"]
    W = int(round(cfg["warmup_epoch"]))
    peak = cfg["base_lr"] * B / 256.0
    log = []
    for s in range(a.steps):
        opt.lr = lr_at(s, S, W, peak, cfg["warmup_multiplier"])
        m = momentum_at(s, S, cfg["teacher_momentum"])
        loss, g, c = model(crops, coords, flags, m)
        for p in student:
            p.grad = None
        loss.backward()
        opt.step()
        log.append({"step": s + 1, "loss": loss.item(), "group": g.item(), "contrast": c.item()})
        print(f"torch step {s + 1}: loss {loss.item()!r} (group {g.item()!r}, "
              f"contrast {c.item()!r})  lr {opt.lr:.5g}  m {m:.5f}")
    # in the dtype it ran in (a float64 run is the truth others are measured against)
    out = dict(model.state_dict())
    for (n, p), mu in zip([(n, p) for n, p in model.named_parameters() if p.requires_grad], opt.mu):
        out[f"optimizer.{n}.momentum_buffer"] = mu
    save_st(a.out, out)
    with open(a.out + ".losses.json", "w") as f:
        json.dump(log, f)
    print(f"replay: {a.steps} steps -> {a.out}")


def _moves(init, truth):
    """Each compared tensor's name, its starting value and its true final value (float64). The
    optimizer's momentum buffers start at zero (they are absent from an init state)."""
    for name, t in sorted(truth.items()):
        if name.endswith("num_batches_tracked"):
            continue
        y = t.double()
        x0 = init[name].double() if name in init else torch.zeros_like(y)
        yield name, x0, y


# float32 stores a tensor y to ~2^-24 ||y||: a move smaller than 64 such units (the teacher's at the
# second step, lr x 0.001 x (1 - m) of its norm) cannot be measured against itself.
RESOLUTION = 64.0 / 2**24


def _errors(state, init, truth):
    """Per tensor ||x - x64|| / ||x64 - x_init||: the error relative to how far the truth moved
    the tensor. Tensors the truth moves by less than float32 can resolve (RESOLUTION of their norm,
    or 1e-12 per element: a bias in front of a BatchNorm, whose exact gradient is 0, and its
    momentum; the teacher at the first steps) have no move to measure against: for them the
    root-mean-square error per element. Returns (moved, still, missing). The same measure as
    tests/state_moves.h."""
    moved, still, missing = {}, {}, []
    for name, x0, y in _moves(init, truth):
        if name not in state:
            missing.append(name)
            continue
        x = state[name].double()
        if x.shape != y.shape:
            moved[name] = float("inf")
            continue
        n = max(y.numel(), 1)
        step, err = (y - x0).norm().item(), (x - y).norm().item()
        if step > max(1e-12 * math.sqrt(n), RESOLUTION * y.norm().item()):
            moved[name] = err / step
        else:
            still[name] = err / math.sqrt(n)
    return moved, still, missing


def _stats(errs):
    v = sorted(errs)
    if not v:
        return 0.0, 0.0, 0.0
    pick = lambda q: v[min(len(v) - 1, int(math.ceil(q * len(v))) - 1)]
    return pick(0.5), pick(0.9), v[-1]


def cmd_compare(a):
    """Engine and PyTorch float32 against PyTorch float64 (the truth), over one directory per
    seed. A directory holds init.safetensors, truth.safetensors (float64), torch32.safetensors and
    engine.safetensors, and the losses: engine.metrics.jsonl, truth.losses.json."""
    rows = {"engine": [], "torch32": []}
    still_worst = {"engine": 0.0, "torch32": 0.0}
    missing_all = []
    for d in a.dirs:
        init, _ = load_st(f"{d}/init.safetensors")
        truth, _ = load_st(f"{d}/truth.safetensors")
        print(f"== {d}")
        per = {}
        for who in ("engine", "torch32"):
            state, _ = load_st(f"{d}/{who}.safetensors")
            moved, still, missing = _errors(state, init, truth)
            if who == "engine":
                missing_all += missing
            rows[who] += list(moved.values())
            still_worst[who] = max([still_worst[who]] + list(still.values()))
            per[who] = moved
            med, p90, worst = _stats(list(moved.values()))
            name = max(moved, key=moved.get) if moved else "-"
            print(f"  {who:8s} median {med:.2e}  p90 {p90:.2e}  worst {worst:.2e} ({name}); "
                  f"{len(still)} tensors the truth leaves in place: worst rms error {max(still.values(), default=0):.1e}")
        eng = [json.loads(l) for l in open(f"{d}/engine.metrics.jsonl") if l.strip()]
        ref = json.load(open(f"{d}/truth.losses.json"))
        t32 = json.load(open(f"{d}/torch32.losses.json"))
        for e, r, f in zip(eng, ref, t32):
            rel = lambda v: abs(v - r["loss"]) / abs(r["loss"])
            print(f"  step {r['step']} loss: truth {r['loss']:.9f}, engine {e['loss']:.9f} "
                  f"({rel(e['loss']):.1e}), torch32 {f['loss']:.9f} ({rel(f['loss']):.1e})")
    em, e9, ew = _stats(rows["engine"])
    tm, t9, tw = _stats(rows["torch32"])
    f, floor = a.factor, a.floor
    checks = [
        ("median", em, f * max(tm, floor)),
        ("90th percentile", e9, f * max(t9, floor)),
        ("worst", ew, max(f * tw, a.worst)),
        ("unmoved tensors (rms error)", still_worst["engine"],
         f * max(still_worst["torch32"], 1e-9)),
    ]
    print(f"== all {len(a.dirs)} seeds, {len(rows['engine'])} moved tensors: error relative to "
          f"each tensor's true move (||x - x64|| / ||x64 - x_init||)")
    print(f"  {'':34s} {'engine':>9s} {'torch32':>9s} {'allowed':>9s}")
    print(f"  {'median':34s} {em:9.2e} {tm:9.2e} {checks[0][2]:9.2e}")
    print(f"  {'90th percentile':34s} {e9:9.2e} {t9:9.2e} {checks[1][2]:9.2e}")
    print(f"  {'worst':34s} {ew:9.2e} {tw:9.2e} {checks[2][2]:9.2e}")
    print(f"  {'unmoved tensors (rms error)':34s} {still_worst['engine']:9.2e} "
          f"{still_worst['torch32']:9.2e} {checks[3][2]:9.2e}")
    failed = [c[0] for c in checks if not c[1] <= c[2]]
    if missing_all:
        print(f"  missing in the engine's file: {sorted(set(missing_all))[:5]}")
        failed.append("missing tensors")
    print("compare:", "AGREE" if not failed else "DIFFER (" + ", ".join(failed) + ")",
          f"(factor {f:g} of PyTorch float32, floor {floor:g}; worst up to {a.worst:g})")
    return 0 if not failed else 1


def _signs(n):
    """A fixed +-1 pattern over a tensor's flat indices (splitmix64 of the index, its top bit):
    the same in bench/train_step_torch.py and tests/apps/test_train.cpp."""
    import numpy as np
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy(1.0 - 2.0 * (z >> np.uint64(63)).astype(np.float64))


def state_checksum(state, init):
    """Per group of tensors (the first name component; BatchNorm running statistics apart, as
    they move far more than the weights): the norm of the move from init, and the
    move projected on the fixed +-1 pattern of _signs (sign-sensitive). float64."""
    out = {}
    for name, x0, y in _moves(init, state):
        d = (y - x0).reshape(-1)
        group = name.split(".")[0] + (":running" if ".running_" in name else "")
        g = out.setdefault(group, [0.0, 0.0])
        g[0] += float((d * d).sum())
        g[1] += float((d * _signs(d.numel())).sum())
    return {g: (math.sqrt(v[0]), v[1]) for g, v in sorted(out.items())}


def cmd_checksum(a):
    state, _ = load_st(a.state)
    init, _ = load_st(a.init)
    for g, (n, p) in state_checksum(state, init).items():
        print(f'    {{"{g}", {n!r}, {p!r}}},')


def cmd_bench(a):
    dev = a.device
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if dev == "cuda" and not torch.cuda.is_available():
        print("train_step_torch: no CUDA device present, nothing to measure")
        return 0
    cfg = {"arch": a.arch, "dim_hidden": a.dim_hidden, "dim_out": a.dim_out,
           "num_prototypes": a.K, "teacher_temp": 0.07, "student_temp": 0.1,
           "contrast_temp": 0.2, "group_loss_weight": 0.5, "center_momentum": 0.9}
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = SlotCon(cfg).to(dev).train()
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    student = [p for p in model.parameters() if p.requires_grad]
    opt = LARS(student, 1e-5, 0.9)
    opt.lr = 1.0 * a.batch / 256
    g = torch.Generator(device="cpu").manual_seed(1)
    crops = [torch.randn(a.batch, 3, a.size, a.size, generator=g).to(dev).to(memory_format=fmt)
             for _ in range(2)]
    xy = torch.rand(a.batch, 2, generator=g) * 0.5
    coords = [torch.cat([xy, xy + 0.5], 1).to(dev) for _ in range(2)]
    flags = [(torch.rand(a.batch, generator=g) < 0.5).to(torch.uint8).to(dev) for _ in range(2)]
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.dtype)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    times = []
    for i in range(a.warmup + a.iters):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev, dtype=amp, enabled=amp is not None):
            loss, _, _ = model(crops, coords, flags, 0.99)
        for p in student:
            p.grad = None
        loss.backward()
        opt.step()
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    print(f"train_step_torch (PyTorch {torch.__version__}) on {name}: {a.arch}, {a.size}px, "
          f"batch {a.batch}, K {a.K}, {a.dtype}{' channels_last' if a.channels_last else ''}"
          f"{'' if dev == 'cuda' else f', {torch.get_num_threads()} threads'}: "
          f"{med * 1e3:.1f} ms/step (median of {a.iters}, min {min(times) * 1e3:.1f})")
    print(f"RESULT train_step_torch images_per_s={a.batch / med:.1f} ms_per_step={med * 1e3:.2f}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("bench", help="time the full step (default)")
    b.add_argument("--device", default="cuda")
    b.add_argument("--arch", default="resnet50")
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--K", type=int, default=256)
    b.add_argument("--dim-hidden", type=int, default=4096)
    b.add_argument("--dim-out", type=int, default=256)
    b.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    b.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--iters", type=int, default=20)
    b.add_argument("--threads", type=int, default=0,
                   help="intra-op CPU threads (0: PyTorch's default; the engine's bench passes "
                        "its own count, so that both run on the same cores)")
    i = sub.add_parser("init", help="write a fresh model state with the reference names")
    i.add_argument("--config-from", required=True, help="an engine checkpoint (its config)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--out", required=True)
    r = sub.add_parser("replay", help="N steps on a recorded batch from an init state")
    r.add_argument("--config-from", required=True, help="an engine checkpoint (its config)")
    r.add_argument("--init", required=True)
    r.add_argument("--batch-file", required=True)
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--f64", action="store_true", help="run in float64")
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="the engine and PyTorch float32 against PyTorch float64, "
                       "error relative to each tensor's move, over seed directories")
    c.add_argument("dirs", nargs="+", help="per seed: init, truth, torch32, engine state files")
    c.add_argument("--factor", type=float, default=4.0,
                   help="the engine's median and 90th percentile may be this multiple of "
                   "PyTorch float32's")
    c.add_argument("--floor", type=float, default=1e-6,
                   help="PyTorch float32's statistics are taken as at least this")
    c.add_argument("--worst", type=float, default=0.05,
                   help="the worst tensor may be off by this much of its move (a wrong "
                   "gradient starts about here) when PyTorch float32's own worst is smaller")
    k = sub.add_parser("checksum", help="per group: the norm of the move from init and its "
                       "signed projection (the numbers tests/apps/test_train.cpp pins)")
    k.add_argument("state")
    k.add_argument("--init", required=True)
    a = ap.parse_args()
    if a.cmd is None:
        a = ap.parse_args(["bench"] + sys.argv[1:])
    return {"bench": cmd_bench, "init": cmd_init, "replay": cmd_replay,
            "compare": cmd_compare, "checksum": cmd_checksum}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
