#!/usr/bin/env python3
"""PyTorch baseline for bench_resnet50: ResNet-50 (torchvision layout, no avgpool / fc) forward +
backward images/s, channels_last + autocast bf16, BatchNorm in training mode, loss = mean of the
stride-32 map; the same batch, size, warm-up and median-of-steps timing as the C++ bench.

Prints one line and exits 0 when torch / torchvision / a GPU are absent."""
import argparse
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    try:
        import torch
        import torchvision
    except ImportError as e:
        print(f"resnet50_torch: PyTorch baseline unavailable ({e})")
        return 0
    if not torch.cuda.is_available():
        print("resnet50_torch: no CUDA device present, nothing to measure")
        return 0
    torch.backends.cudnn.benchmark = True
    net = torchvision.models.resnet50()
    net.fc = torch.nn.Identity()
    net.avgpool = torch.nn.Identity()
    body = torch.nn.Sequential(*list(net.children())[:-2])  # conv1 .. layer4
    body = body.cuda().to(memory_format=torch.channels_last).train()
    x = torch.randn(args.batch, 3, args.size, args.size, device="cuda")
    x = x.to(memory_format=torch.channels_last)
    times = []
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for p in body.parameters():
            p.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = body(x)
        loss = y.float().mean()
        loss.backward()
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    med = statistics.median(times)
    print(f"resnet50_torch (PyTorch {torch.__version__}) on {torch.cuda.get_device_name(0)}: "
          f"batch {args.batch}, {args.size}px, bf16 autocast channels_last: {med:.2f} ms/step, "
          f"{1000.0 * args.batch / med:.1f} images/s (median of {args.steps}, "
          f"min {min(times):.2f} ms)")
    print(f"RESULT resnet50_torch images_per_s={1000.0 * args.batch / med:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
