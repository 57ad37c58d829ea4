// grad_buckets.h: data-parallel gradient averaging in buckets, started during backward.
//
// What PyTorch's DistributedDataParallel does, on the engine's communicator (engine/comm.h): the
// parameters' gradients are averaged over the ranks, and the all-reduces run while the rest of
// backward is still being computed instead of after it.
//
// Use, around every backward of a step:
//   GradientBuckets buckets(params, names, comm, 25 << 20);
//   { GradReadyScope hook(buckets.hook()); loss.backward(); }
//   buckets.finish();  // every parameter's .grad() is now the mean over the ranks
//
// Buckets. The parameters are cut into buckets of at most bucket_bytes of gradient (a larger
// parameter is a bucket of its own; a bucket holds one dtype on one device), each with a flat
// buffer made once. A bucket is started — its members' gradients copied into its buffer, then
// Communicator::start_all_reduce_sum on it — as soon as the backward has finished every member's
// gradient (engine/grad_ready.h) and every earlier bucket has been started: buckets start in
// their order on every rank, so that the ranks' collectives pair up. finish() starts the buckets
// that are left (parameters the backward did not reach), waits for the all-reduces
// (wait_all_reduces: on a GPU the engine stream waits, not the host), divides by the world size
// and hands the averages back: a parameter whose gradient is dense row-major gets a view of the
// buffer as its .grad() (no copy), another (channels-last conv weights) has the average copied
// into its own layout. Such a view is valid until the next finish() writes the buffer again (the
// optimizer's zero_grad drops it before that).
//
// Order. The first step's buckets follow the parameters in reverse order (a backward meets the
// last layers first). From the second step on, they follow the order in which the first step's
// backward finished the gradients (the walk of the same graph: the same order on every rank, as
// grad_ready.h says; checked once, with a hash all-gathered on the host, and the first plan kept
// where the ranks differ), so that a bucket starts as early as its gradients allow. Every parameter
// must have a gradient after backward (an sc::Error names the first that has none: the ranks'
// buffers would not line up).
//
// On the CPU (MPI, loopback) an all-reduce completes inside start (engine/comm.h), so the
// buckets change where the collectives happen, not how long the step takes; with NCCL they
// overlap the backward on the GPU. Results are the same sums, per element, whatever the bucket
// boundaries on MPI's and loopback's fixed reduction order; NCCL's may round differently for
// different boundaries, never differently between ranks.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/comm.h"
#include "engine/grad_ready.h"

namespace sc {

class GradientBuckets {
 public:
  // comm is kept by reference and must outlive this (world > 1 expected; world 1 works: the
  // averages are the gradients themselves). names: one per parameter, for messages.
  GradientBuckets(std::vector<Tensor> params, std::vector<std::string> names, Communicator& comm,
                  int64_t bucket_bytes);

  // The call to install with a GradReadyScope around backward.
  GradReadyFn hook();
  // After backward: see the header comment.
  void finish();

  // What the tests and the bench look at.
  int64_t bucket_bytes() const { return bucket_bytes_; }
  // Each bucket's parameters (indices into params), in the order the buckets start.
  const std::vector<std::vector<int>>& buckets() const { return members_; }
  // For the last step, per bucket: how many parameters' gradients were finished when it was
  // started (== the parameter count for a bucket started by finish()).
  const std::vector<int>& started_after() const { return started_after_; }
  // Buckets started during the last backward (before finish()).
  int started_during_backward() const { return started_in_backward_; }
  int64_t steps() const { return steps_; }
  // True once the buckets follow the first backward's order; false before that, and for good
  // when the ranks' first backwards finished the gradients in different orders.
  bool replanned() const { return replanned_; }
  // Bucket b's flat buffer (planned anew after the first step).
  const Tensor& buffer(int b) const { return buffers_.at(size_t(b)); }

 private:
  void plan(const std::vector<int>& order);
  void on_ready(TensorImpl& leaf);
  void start(int b);

  std::vector<Tensor> params_;
  std::vector<std::string> names_;
  Communicator& comm_;
  int64_t bucket_bytes_;
  std::unordered_map<TensorImpl*, int> index_;

  std::vector<std::vector<int>> members_;  // per bucket
  std::vector<int> bucket_of_;             // per parameter
  std::vector<Tensor> buffers_;            // per bucket, flat, made by plan()

  // per step
  std::vector<int> left_;  // per bucket: members not finished yet
  std::vector<char> ready_;
  std::vector<int> ready_order_;
  int next_ = 0;  // the next bucket to start
  std::vector<int> started_after_;
  int started_in_backward_ = 0;
  bool in_step_ = false;
  int64_t steps_ = 0;
  bool replanned_ = false;
};

}  // namespace sc
