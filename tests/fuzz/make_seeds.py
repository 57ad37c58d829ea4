#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (tests/fuzz/corpus/<target>/). The files are committed;
this script is how they were made, for when a reader's format grows. Needs Python 3 and, for the
images, Pillow (a developer tool only: nothing in the build or the tests runs this script).

  python3 tests/fuzz/make_seeds.py
"""
import io
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors: 8-byte little-endian header length, JSON header, data ----
SIZES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    for name, dt, shape, raw in tensors:
        n = SIZES[dt]
        for s in shape:
            n *= s
        assert len(raw) == n, name
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [len(data), len(data) + n]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def seq(n, scale=0.1):
    return [((i * 37) % 11 - 5) * scale for i in range(n)]


def make_safetensors():
    # a state file that fits the fuzz target's small module
    out("safetensors", "state_small_module.safetensors", safetensors([
        ("0.weight", "F32", [3, 2], f32(seq(6))),
        ("0.bias", "F32", [3], f32(seq(3))),
        ("1.weight", "F32", [2, 3], f32(seq(6)))]))
    # every dtype, a scalar and an empty tensor
    out("safetensors", "dtypes.safetensors", safetensors([
        ("a.f64", "F64", [2], struct.pack("<2d", 1.5, -2.0)),
        ("b.f32", "F32", [2, 2], f32([1, 2, 3, 4])),
        ("c.bf16", "BF16", [3], struct.pack("<3H", 0x3F80, 0xC000, 0x0000)),
        ("d.f16", "F16", [1, 3], struct.pack("<3H", 0x3C00, 0xC000, 0x7BFF)),
        ("e.i64", "I64", [], struct.pack("<q", 5)),
        ("f.u8", "U8", [4], bytes([0, 1, 2, 255])),
        ("g.bool", "BOOL", [2], bytes([0, 1])),
        ("h.empty", "F16", [0], b"")], {"note": "every dtype"}))
    # a checkpoint: format tag, counters, config, loss scale, one momentum buffer
    cfg = json.load(open(os.path.join(ROOT, "configs", "demo.json")))
    out("safetensors", "checkpoint.safetensors", safetensors([
        ("0.weight", "F32", [3, 2], f32(seq(6))),
        ("0.bias", "F32", [3], f32(seq(3))),
        ("1.weight", "F32", [2, 3], f32(seq(6))),
        ("optimizer.0.weight.momentum_buffer", "F32", [3, 2], f32(seq(6, 0.01)))],
        {"format": "slotcon-checkpoint-v1", "epoch": "3", "step": "48",
         "config": json.dumps(cfg), "loss_scale": "65536", "loss_scale_growth": "7"}))
    # a batch file: B = 2, S = 32, both views
    B, S = 2, 32
    ts = []
    for v in range(2):
        ts.append(("crops.%d" % v, "F32", [B, 3, S, S], f32(seq(B * 3 * S * S, 0.3))))
        ts.append(("coords.%d" % v, "F32", [B, 4], f32([0.1, 0.2, 0.9, 0.8, 0.0, 0.0, 1.0, 1.0])))
        ts.append(("flags.%d" % v, "U8", [B], bytes([v, 1 - v])))
    out("safetensors", "batch.safetensors", safetensors(ts))


def make_images():
    from PIL import Image  # Pillow

    def img(mode, w, h):
        im = Image.new("RGB", (w, h))
        im.putdata([((x * 40) % 256, (y * 60) % 256, ((x + y) * 25) % 256)
                    for y in range(h) for x in range(w)])
        return im if mode == "RGB" else im.convert(mode)

    def save(name, im, fmt, **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        out("image", name, b.getvalue())

    save("rgb.png", img("RGB", 7, 5), "PNG")
    save("gray.png", img("L", 6, 4), "PNG")
    save("gray_alpha.png", img("LA", 5, 3), "PNG")
    save("palette.png", img("P", 9, 2), "PNG")
    save("rgba.png", img("RGBA", 4, 4), "PNG")
    save("interlaced.png", img("RGB", 8, 8), "PNG", interlace=1)
    save("gray16.png", img("L", 5, 5).convert("I;16"), "PNG")
    save("one_pixel.png", img("RGB", 1, 1), "PNG")
    save("baseline.jpg", img("RGB", 17, 9), "JPEG", quality=80)
    save("gray.jpg", img("L", 8, 8), "JPEG")
    save("progressive.jpg", img("RGB", 16, 16), "JPEG", progressive=True)
    save("subsampled_444.jpg", img("RGB", 11, 7), "JPEG", subsampling=0)
    save("cmyk.jpg", img("CMYK", 8, 8), "JPEG")
    save("restart_markers.jpg", img("RGB", 32, 16), "JPEG", restart_marker_blocks=1)


def make_configs():
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        with open(os.path.join(ROOT, "configs", name), "rb") as f:
            out("config", name, f.read())
    # the file's text, then NUL-separated command-line arguments
    out("config", "overrides", b'{"dataset": "synthetic"}\0--epochs\0003\0--batch-size=8\0'
        b'--tf32\0on\0--keep_checkpoints\0002')
    out("config", "empty_object", b"{}")
    out("config", "unknown_key", b'{"arch": "resnet18", "no_such_key": 1}')
    out("config", "wrong_type", b'{"epochs": "ten"}')
    out("config", "nested", b'{"arch": ["resnet18", {"a": [1, 2.5e300, null, true]}]}')


if __name__ == "__main__":
    make_safetensors()
    make_images()
    make_configs()
