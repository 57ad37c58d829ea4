#!/usr/bin/env python3
"""The baseline for bench_loader: SlotCon's two-view augmentation with PIL, the way the authors'
torchvision pipeline runs it (data/transforms.py: CustomTwoCrop, CustomRandomHorizontalFlip,
ColorJitter, RandomGrayscale, GaussianBlur, Solarize, ToTensor + Normalize), on the same JPEGs
and the same number of cores.

torchvision and numpy are not needed: the transforms are re-implemented with PIL calls that are
what torchvision calls for PIL images (ImageEnhance for brightness / contrast / saturation, HSV
for hue, Image.resize(BICUBIC), ImageFilter.GaussianBlur, ImageOps.solarize), and ToTensor +
Normalize is done in C by PIL's float mode (convert("F").point(x * a + b)), producing the same
float32 CHW bytes. Batch collation and worker-to-main transfer are not counted (they would only
make the baseline slower).

Usage:
  build/bench/bench_loader --write-only /tmp/jpegs        # 300 JPEGs, 640x480
  /usr/bin/python3 bench/loader_pil_baseline.py --dir /tmp/jpegs [--workers 2] [--size 224]
"""
import argparse
import glob
import math
import multiprocessing as mp
import os
import random
import time

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def get_params(w, h, scale):
    area = h * w
    for _ in range(10):
        target = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(RATIO):
        cw, ch = w, int(round(w / min(RATIO)))
    elif in_ratio > max(RATIO):
        ch, cw = h, int(round(h * max(RATIO)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def intersection(a, b):
    i1, j1, h1, w1 = a
    i2, j2, h2, w2 = b
    xo = max(0, min(j1 + w1, j2 + w2) - max(j1, j2))
    yo = max(0, min(i1 + h1, i2 + h2) - max(i1, i2))
    return xo * yo


def get_params_conditioned(w, h, scale, other):
    area = h * w
    for _ in range(10):
        target = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            p = (random.randint(0, h - ch), random.randint(0, w - cw), ch, cw)
            if intersection(p, other) >= 0.01 * target:
                return p
    return get_params(w, h, scale)


def adjust_hue(img, factor):
    h, s, v = img.convert("HSV").split()
    shift = int(factor * 255) & 0xFF
    h = h.point([(x + shift) & 0xFF for x in range(256)])
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img):
    order = random.sample(range(4), 4)
    b = random.uniform(0.6, 1.4)
    c = random.uniform(0.6, 1.4)
    s = random.uniform(0.8, 1.2)
    hf = random.uniform(-0.1, 0.1)
    for op in order:
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(s)
        else:
            img = adjust_hue(img, hf)
    return img


def to_tensor_normalize(img):
    # float32 CHW, (v / 255 - mean) / std, computed by PIL in C.
    out = []
    for band, m, s in zip(img.split(), MEAN, STD):
        a, b = 1.0 / (255.0 * s), -m / s
        out.append(band.convert("F").point(lambda x, a=a, b=b: x * a + b).tobytes())
    return b"".join(out)


def view_transform(img, view):
    if random.random() < 0.8:
        img = color_jitter(img)
    if random.random() < 0.2:
        g = img.convert("L")
        img = Image.merge("RGB", (g, g, g))
    if random.random() < (1.0 if view == 0 else 0.1):
        img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    if view == 1 and random.random() < 0.2:
        img = ImageOps.solarize(img, 128)
    return to_tensor_normalize(img)


def augment(img, size, min_scale):
    w, h = img.size
    scale = (min_scale, 1.0)
    p1 = get_params(w, h, scale)
    p2 = get_params_conditioned(w, h, scale, p1)
    views = []
    for v, (i, j, ch, cw) in enumerate((p1, p2)):
        crop = img.crop((j, i, j + cw, i + ch)).resize((size, size), Image.BICUBIC)
        if random.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        views.append(view_transform(crop, v))
    return views


def run(args):
    files, size, min_scale, seed = args
    random.seed(seed)
    t0 = time.perf_counter()
    c0 = time.process_time()
    n = 0
    for f in files:
        with Image.open(f) as im:
            img = im.convert("RGB")
        views = augment(img, size, min_scale)
        assert len(views[0]) == 3 * size * size * 4
        n += 1
    return n, time.perf_counter() - t0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="folder of JPEGs (bench_loader --write-only DIR)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--min-scale", type=float, default=0.08)
    ap.add_argument("--repeat", type=int, default=2, help="passes over the files in the parallel run")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.dir, "*.jpg")))
    if not files:
        raise SystemExit(f"no .jpg files in {args.dir}")
    print(f"{len(files)} files, views {args.size}x{args.size}, PIL {Image.__version__}")

    # One process: images per second on one core.
    n, t, c = run((files[: min(len(files), 150)], args.size, args.min_scale, 0))
    print(f"PIL pipeline, 1 process: {n / t:.1f} images/s wall, {n / c:.1f} images per CPU-second "
          f"({1000 * c / n:.2f} CPU ms per image, two views)")

    # W processes over the files (as W DataLoader workers would be).
    w = max(1, args.workers)
    work = files * args.repeat
    chunks = [(work[k::w], args.size, args.min_scale, k + 1) for k in range(w)]
    with mp.Pool(w) as pool:
        t0 = time.perf_counter()
        results = pool.map(run, chunks)
        wall = time.perf_counter() - t0
    total = sum(r[0] for r in results)
    cpu = sum(r[2] for r in results)
    print(f"PIL pipeline, {w} processes: wall {total / wall:.1f} images/s ({total / wall / w:.1f} per process), "
          f"{total / cpu:.1f} images per CPU-second (workers only)")


if __name__ == "__main__":
    main()
