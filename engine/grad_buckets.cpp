// grad_buckets.cpp: see grad_buckets.h.
#include "engine/grad_buckets.h"

#include <algorithm>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace sc {

GradientBuckets::GradientBuckets(std::vector<Tensor> params, std::vector<std::string> names,
                                 Communicator& comm, int64_t bucket_bytes)
    : params_(std::move(params)),
      names_(std::move(names)),
      comm_(comm),
      bucket_bytes_(bucket_bytes) {
  SC_CHECK(names_.size() == params_.size(), "GradientBuckets: ", params_.size(), " parameters but ",
           names_.size(), " names");
  SC_CHECK(bucket_bytes_ > 0, "GradientBuckets: the bucket size must be positive, got ",
           bucket_bytes_);
  for (size_t i = 0; i < params_.size(); ++i) {
    SC_CHECK(params_[i].defined() && is_floating(params_[i].dtype()),
             "GradientBuckets: ", names_[i], " is not a floating-point tensor");
    SC_CHECK(index_.emplace(params_[i].impl(), int(i)).second, "GradientBuckets: ", names_[i],
             " is listed twice");
  }
  std::vector<int> reverse;
  for (int i = int(params_.size()) - 1; i >= 0; --i) reverse.push_back(i);
  plan(reverse);
}

// Buckets over the parameters in `order`: a new bucket when the next one would pass the size,
// or has another dtype or device.
void GradientBuckets::plan(const std::vector<int>& order) {
  members_.clear();
  buffers_.clear();
  bucket_of_.assign(params_.size(), -1);
  int64_t bytes = 0;
  for (int i : order) {
    const Tensor& p = params_[size_t(i)];
    const int64_t b = p.numel() * int64_t(dtype_size(p.dtype()));
    const bool fits = !members_.empty() && bytes + b <= bucket_bytes_ &&
                      params_[size_t(members_.back()[0])].dtype() == p.dtype() &&
                      params_[size_t(members_.back()[0])].device() == p.device();
    if (!fits) {
      members_.emplace_back();
      bytes = 0;
    }
    members_.back().push_back(i);
    bucket_of_[size_t(i)] = int(members_.size()) - 1;
    bytes += b;
  }
  for (const std::vector<int>& m : members_) {
    int64_t n = 0;
    for (int i : m) n += params_[size_t(i)].numel();
    const Tensor& first = params_[size_t(m[0])];
    buffers_.push_back(empty({n}, first.dtype(), first.device()));
  }
}

GradReadyFn GradientBuckets::hook() {
  left_.clear();
  for (const std::vector<int>& m : members_) left_.push_back(int(m.size()));
  ready_.assign(params_.size(), 0);
  ready_order_.clear();
  next_ = 0;
  started_after_.assign(members_.size(), -1);
  started_in_backward_ = 0;
  in_step_ = true;
  return [this](TensorImpl& leaf) { on_ready(leaf); };
}

void GradientBuckets::on_ready(TensorImpl& leaf) {
  const auto it = index_.find(&leaf);
  if (it == index_.end() || !in_step_) return;  // a leaf that is not one of ours
  const int i = it->second;
  if (ready_[size_t(i)]) return;  // a second backward under the same hook adds nothing new
  ready_[size_t(i)] = 1;
  ready_order_.push_back(i);
  --left_[size_t(bucket_of_[size_t(i)])];
  while (next_ < int(members_.size()) && left_[size_t(next_)] == 0) {
    start(next_++);
    ++started_in_backward_;
  }
}

// The members' gradients into the bucket's buffer (row-major), then its all-reduce.
void GradientBuckets::start(int b) {
  NoGradGuard ng;
  Tensor& buf = buffers_[size_t(b)];
  int64_t at = 0;
  for (int i : members_[size_t(b)]) {
    const Tensor g = params_[size_t(i)].grad();
    SC_CHECK(g.defined(), "data-parallel step: ", names_[size_t(i)],
             " has no gradient, so the ranks' gradient buffers would not line up");
    const int64_t n = g.numel();
    Tensor part = reshape(slice(buf, 0, at, at + n), g.shape());
    copy_(part, g);
    at += n;
  }
  started_after_[size_t(b)] = int(ready_order_.size());
  comm_.start_all_reduce_sum(buf);
}

void GradientBuckets::finish() {
  NoGradGuard ng;
  if (!in_step_) hook();  // a backward without the hook: every bucket starts here
  while (next_ < int(members_.size())) start(next_++);
  const double inv = 1.0 / double(comm_.world());
  for (size_t b = 0; b < members_.size(); ++b) {
    Tensor& buf = buffers_[b];
    comm_.wait_all_reduces(buf.device());  // the first call per device waits for all of them
    if (comm_.world() > 1) mul_(buf, inv);
    int64_t at = 0;
    for (int i : members_[b]) {
      Tensor& p = params_[size_t(i)];
      Tensor g = p.grad();
      const int64_t n = g.numel();
      Tensor part = reshape(slice(buf, 0, at, at + n), g.shape());
      if (g.is_contiguous())
        p.set_grad(part);  // the buffer itself: no copy
      else
        copy_(g, part);  // into the gradient's own layout
      at += n;
    }
  }
  in_step_ = false;
  ++steps_;
  // From the second step on: the buckets in the order the first backward finished the gradients
  // (those it did not reach last, in reverse order).
  if (steps_ == 1 && !ready_order_.empty()) {
    std::vector<int> order = ready_order_;
    for (int i = int(params_.size()) - 1; i >= 0; --i)
      if (!ready_[size_t(i)]) order.push_back(i);
    // Every rank must plan the same buckets. The same graph gives the same order, but a model
    // whose graph depended on its rank's data would not: compare (once, on the host) and keep
    // the first plan, which every rank shares, where they differ.
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the order
    for (int i : order) h = (h ^ uint64_t(uint32_t(i))) * 1099511628211ull;
    const std::vector<int64_t> all = comm_.all_gather_i64(int64_t(h));
    if (std::all_of(all.begin(), all.end(), [&](int64_t v) { return v == all[0]; })) {
      plan(order);  // new buffers; the gradients that are views keep the old ones until dropped
      replanned_ = true;
    }
  }
}

}  // namespace sc
