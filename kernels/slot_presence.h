// slot_presence.h: which prototypes are present in each image (the masks of the slot contrast,
// slot_contrast.h).
//
// present[b,k] = 1 iff k is the arg-max over k' of dots[b,k',p] (first maximum on ties) for at
// least one pixel p; dots (B, K, P) are the *unaligned* scores. When and_mask is given,
// present[b,k] &= and_mask[b,k] (so the query mask present_q & present_k comes out of one pass).
// present (B, K) U8 is written (=).
//
// Requires: B, K, P >= 1 (CUDA: B <= 65535).
// Types: T = float / double on both devices. CUDA: asynchronous on `stream`, no workspace.
#pragma once
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace sc {

template <class T>
void slot_presence_ref(int64_t B, int64_t K, int64_t P, const T* dots, const uint8_t* and_mask,
                       uint8_t* present);

// CUDA launcher: declared in every build, defined only in builds with CUDA (reach it through
// engine/dispatch.h, which never calls it in a build without).
template <class T>
void slot_presence_cuda(int64_t B, int64_t K, int64_t P, const T* dots, const uint8_t* and_mask,
                        uint8_t* present, cudaStream_t stream);

}  // namespace sc
