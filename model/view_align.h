// view_align.h: undoing the augmentation of a view (SLOTCON.md §3) as a linear map.
//
// RoIAlign (aligned=True, adaptive sampling: ceil(box/bins) samples per bin, output the input's
// h x w) followed by the view's horizontal flip is, for one image, a fixed linear map from the
// h*w input pixels to the h*w output pixels: out[p] = sum_q M[p, q] in[q]. This builds M on the
// host from the view's overlap box, so that alignment becomes a batched matmul with plain engine
// ops (and its gradient the transposed matmul) — the unfused reference path of the fused
// view-alignment kernel.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace sc {

// M (h*w, h*w), row-major, for the box (x1, y1, x2, y2) in normalised view coordinates.
std::vector<double> roi_align_matrix(double x1, double y1, double x2, double y2, bool flip, int h,
                                     int w);
// M for every image of a batch: coords (B, 4), flags (B) U8 -> (B, h*w, h*w) of `dtype` on
// `device`. Reads coords and flags back to the host.
Tensor view_align_matrices(const Tensor& coords, const Tensor& flags, int h, int w, DType dtype,
                           Device device);

}  // namespace sc
