// state_moves.h: how far a training state is from a reference state, measured against how far the
// reference moved from the common starting state — the measure of bench/train_step_torch.py's
// `compare` and `checksum`, for the tests that check whole steps (docs/training.md, "Checking the
// step against PyTorch").
//
// For a tensor x after some steps, its reference x_ref and its starting value x_init (zero for an
// optimizer momentum buffer, which an init state lacks):
//   moved tensors  error = ||x - x_ref|| / ||x_ref - x_init||
//   still tensors  the reference moves them by less than float32 can resolve (64 x 2^-24 of their
//                  norm, or 1e-12 per element): a bias in front of a BatchNorm, whose exact
//                  gradient is 0; the teacher at the first step (a copy of the student) and at
//                  the second (moved by (1 - m) of a small step): the root-mean-square error per
//                  element, since there is no move to divide by.
// The checksum of a state: per group of tensors (the first name component; BatchNorm running
// statistics apart), the norm of the move
// from init and the move projected on a fixed +-1 pattern (splitmix64 of the flat index, top bit),
// which a sign error or a mislaid update changes and a norm alone would not.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/safetensors.h"

namespace state_moves {

struct Errors {
  std::map<std::string, double> moved, still;
  std::vector<std::string> missing;
};

inline std::vector<double> values(const sc::Tensor& t) {
  return sc::cast(t, sc::DType::F64).contiguous().to_vector();
}

inline bool compared(const std::string& name) {
  return name.size() < 19 || name.compare(name.size() - 19, 19, "num_batches_tracked") != 0;
}

inline std::vector<double> start_of(const sc::TensorMap& init, const std::string& name, size_t n) {
  auto it = init.find(name);
  return it == init.end() ? std::vector<double>(n, 0.0) : values(it->second);
}

// float32 stores a tensor y to ~2^-24 ||y||: a move smaller than 64 such units (the teacher's at
// the second step, lr x 0.001 x (1 - m) of its norm) cannot be measured against itself.
constexpr double kResolution = 64.0 / 16777216.0;

inline double norm(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

inline Errors errors(const sc::TensorMap& state, const sc::TensorMap& init,
                     const sc::TensorMap& ref) {
  Errors e;
  for (const auto& kv : ref) {
    if (!compared(kv.first)) continue;
    auto it = state.find(kv.first);
    if (it == state.end() || it->second.numel() != kv.second.numel()) {
      e.missing.push_back(kv.first);
      continue;
    }
    const std::vector<double> y = values(kv.second), x = values(it->second);
    const std::vector<double> x0 = start_of(init, kv.first, y.size());
    double step = 0, err = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      step += (y[i] - x0[i]) * (y[i] - x0[i]);
      err += (x[i] - y[i]) * (x[i] - y[i]);
    }
    const double n = double(std::max<size_t>(y.size(), 1));
    if (std::sqrt(step) > std::max(1e-12 * std::sqrt(n), kResolution * norm(y)))
      e.moved[kv.first] = std::sqrt(err / step);
    else
      e.still[kv.first] = std::sqrt(err / n);
  }
  return e;
}

// The biases of the heads' layers in front of a BatchNorm (projector and predictor mlp.0 and
// mlp.3), and their momentum buffers: their exact gradient is 0 (the BatchNorm subtracts the
// mean), so what a float32 step puts there is round-off noise, which no move measures. Two float32
// runs that sum in different orders differ there by O(1) of that noise.
inline bool zero_gradient_bias(const std::string& name) {
  for (const char* s : {"mlp.0.bias", "mlp.3.bias"}) {
    const std::string n = s;
    if (name.size() >= n.size() && name.compare(name.size() - n.size(), n.size(), n) == 0)
      return true;
    if (name.find(n + ".momentum_buffer") != std::string::npos) return true;
  }
  return false;
}

// Moves the zero-gradient biases out of e.moved; returns the largest absolute difference there.
inline double drop_zero_gradient_biases(Errors& e, const sc::TensorMap& state,
                                        const sc::TensorMap& ref) {
  double worst = 0;
  for (auto it = e.moved.begin(); it != e.moved.end();) {
    if (!zero_gradient_bias(it->first)) {
      ++it;
      continue;
    }
    const std::vector<double> x = values(state.at(it->first)), y = values(ref.at(it->first));
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::fabs(x[i] - y[i]));
    it = e.moved.erase(it);
  }
  return worst;
}

struct Stats {
  double median = 0, p90 = 0, worst = 0;
  std::string worst_name;
};
inline Stats stats(const std::map<std::string, double>& errs) {
  Stats s;
  std::vector<double> v;
  for (const auto& kv : errs) {
    v.push_back(kv.second);
    if (kv.second >= s.worst) s.worst = kv.second, s.worst_name = kv.first;
  }
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto pick = [&](double q) {
    const size_t k = size_t(std::ceil(q * double(v.size())));
    return v[std::min(v.size() - 1, k == 0 ? 0 : k - 1)];
  };
  s.median = pick(0.5);
  s.p90 = pick(0.9);
  return s;
}

inline double sign_at(uint64_t i) {
  uint64_t z = i + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
  return (z >> 63) ? -1.0 : 1.0;
}

// The first name component, with ":running" for BatchNorm running statistics (which move by far
// more than the weights in a few steps and would hide them in one sum).
inline std::string group_of(const std::string& name) {
  const bool running = name.find(".running_") != std::string::npos;
  return name.substr(0, name.find('.')) + (running ? ":running" : "");
}

struct GroupSum {
  double norm = 0, projection = 0;
  double size = 0;  // the norm of the group's values themselves (float32 resolves ~2^-24 of it)
};
inline std::map<std::string, GroupSum> checksum(const sc::TensorMap& state,
                                                const sc::TensorMap& init) {
  std::map<std::string, GroupSum> out;
  for (const auto& kv : state) {
    if (!compared(kv.first)) continue;
    const std::vector<double> y = values(kv.second);
    const std::vector<double> x0 = start_of(init, kv.first, y.size());
    GroupSum& g = out[group_of(kv.first)];
    for (size_t i = 0; i < y.size(); ++i) {
      const double d = y[i] - x0[i];
      g.norm += d * d;
      g.projection += d * sign_at(i);
      g.size += y[i] * y[i];
    }
  }
  for (auto& kv : out) {
    kv.second.norm = std::sqrt(kv.second.norm);
    kv.second.size = std::sqrt(kv.second.size);
  }
  return out;
}

}  // namespace state_moves
