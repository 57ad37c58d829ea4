#include "model/grouping_score.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/tensor.h"

namespace sc {

std::vector<int> max_weight_matching(const std::vector<double>& w, int R, int C) {
  // Hungarian algorithm (shortest augmenting paths with potentials) on the square cost matrix
  // cost = max(w) - w, padded with zeros to n x n.
  const int n = std::max(R, C);
  double wmax = 0;
  for (double v : w) wmax = std::max(wmax, v);
  auto cost = [&](int i, int j) {  // 1-based
    return (i <= R && j <= C) ? wmax - w[size_t(i - 1) * size_t(C) + size_t(j - 1)] : wmax;
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(size_t(n) + 1, 0), v(size_t(n) + 1, 0);
  std::vector<int> p(size_t(n) + 1, 0), way(size_t(n) + 1, 0);
  for (int i = 1; i <= n; ++i) {
    p[0] = i;
    int j0 = 0;
    std::vector<double> minv(size_t(n) + 1, inf);
    std::vector<bool> used(size_t(n) + 1, false);
    do {
      used[size_t(j0)] = true;
      const int i0 = p[size_t(j0)];
      double delta = inf;
      int j1 = 0;
      for (int j = 1; j <= n; ++j) {
        if (used[size_t(j)]) continue;
        const double cur = cost(i0, j) - u[size_t(i0)] - v[size_t(j)];
        if (cur < minv[size_t(j)]) {
          minv[size_t(j)] = cur;
          way[size_t(j)] = j0;
        }
        if (minv[size_t(j)] < delta) {
          delta = minv[size_t(j)];
          j1 = j;
        }
      }
      for (int j = 0; j <= n; ++j) {
        if (used[size_t(j)]) {
          u[size_t(p[size_t(j)])] += delta;
          v[size_t(j)] -= delta;
        } else {
          minv[size_t(j)] -= delta;
        }
      }
      j0 = j1;
    } while (p[size_t(j0)] != 0);
    do {
      const int j1 = way[size_t(j0)];
      p[size_t(j0)] = p[size_t(j1)];
      j0 = j1;
    } while (j0);
  }
  std::vector<int> match(static_cast<size_t>(R), -1);
  for (int j = 1; j <= n; ++j)
    if (p[size_t(j)] >= 1 && p[size_t(j)] <= R && j <= C) match[size_t(p[size_t(j)] - 1)] = j - 1;
  return match;
}

GroupingScore grouping_score(const std::vector<int64_t>& prototype, const std::vector<int>& cls,
                             int K, int C) {
  SC_CHECK(prototype.size() == cls.size(), "grouping_score: ", prototype.size(),
           " predictions for ", cls.size(), " labels");
  SC_CHECK(K > 0 && C > 0, "grouping_score: needs K > 0 and C > 0");
  std::vector<double> overlap(size_t(K) * size_t(C), 0);
  std::vector<int64_t> proto_n(static_cast<size_t>(K), 0), gt_n(static_cast<size_t>(C), 0);
  for (size_t i = 0; i < cls.size(); ++i) {
    SC_CHECK(prototype[i] >= 0 && prototype[i] < K && cls[i] >= 0 && cls[i] < C,
             "grouping_score: label out of range at pixel ", i);
    overlap[size_t(prototype[i]) * size_t(C) + size_t(cls[i])] += 1;
    proto_n[size_t(prototype[i])]++;
    gt_n[size_t(cls[i])]++;
  }
  std::vector<int> match = max_weight_matching(overlap, K, C);
  GroupingScore s;
  int64_t correct = 0;
  std::vector<int> proto_of_class(static_cast<size_t>(C), -1);
  for (int k = 0; k < K; ++k) {
    s.prototypes_used += proto_n[size_t(k)] > 0;
    if (match[size_t(k)] >= 0) proto_of_class[size_t(match[size_t(k)])] = k;
  }
  int present = 0;
  double sum = 0;
  for (int c = 0; c < C; ++c) {
    if (gt_n[size_t(c)] == 0) continue;
    ++present;
    const int k = proto_of_class[size_t(c)];
    if (k < 0) continue;  // IoU 0
    const double inter = overlap[size_t(k) * size_t(C) + size_t(c)];
    correct += int64_t(inter);
    sum += inter / double(proto_n[size_t(k)] + gt_n[size_t(c)] - int64_t(inter));
  }
  s.miou = present ? sum / present : 0.0;
  s.pixel_accuracy = cls.empty() ? 0.0 : double(correct) / double(cls.size());
  return s;
}

namespace {
double dot_rows(const double* a, const double* b, size_t n) {
  double s = 0;
  for (size_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}
// v (n values) scaled to unit length in place (a zero vector stays zero).
void normalise(double* v, size_t n) {
  const double n2 = dot_rows(v, v, n);
  const double inv = n2 > 0 ? 1.0 / std::sqrt(n2) : 0.0;
  for (size_t d = 0; d < n; ++d) v[d] *= inv;
}
// Row i of feats (dim values) scaled to unit length.
void normalised_row(const std::vector<double>& feats, int64_t dim, size_t i, double* out) {
  std::copy_n(feats.begin() + std::ptrdiff_t(i * size_t(dim)), dim, out);
  normalise(out, size_t(dim));
}
// Every row of feats (rows of dim values) scaled to unit length.
std::vector<double> normalised_rows(const std::vector<double>& feats, int64_t dim) {
  std::vector<double> x(feats.size());
  for (size_t i = 0; i < feats.size() / size_t(dim); ++i)
    normalised_row(feats, dim, i, x.data() + i * size_t(dim));
  return x;
}
}  // namespace

ClassMeans fit_class_means(const std::vector<double>& feats, int64_t dim,
                           const std::vector<int>& cls, int num_classes) {
  SC_CHECK(dim > 0 && num_classes > 0, "fit_class_means: needs dim > 0 and classes > 0");
  SC_CHECK(feats.size() == cls.size() * size_t(dim), "fit_class_means: ", feats.size(),
           " feature values for ", cls.size(), " cells of ", dim);
  ClassMeans m;
  m.dim = dim;
  m.num_classes = num_classes;
  m.mean.assign(size_t(num_classes) * size_t(dim), 0.0);
  m.count.assign(size_t(num_classes), 0);
  std::vector<double> row(static_cast<size_t>(dim));
  for (size_t i = 0; i < cls.size(); ++i) {
    SC_CHECK(cls[i] >= 0 && cls[i] < num_classes, "fit_class_means: label out of range at cell ",
             i);
    normalised_row(feats, dim, i, row.data());
    double* mu = m.mean.data() + size_t(cls[i]) * size_t(dim);
    for (int64_t d = 0; d < dim; ++d) mu[d] += row[size_t(d)];
    m.count[size_t(cls[i])]++;
  }
  for (int c = 0; c < num_classes; ++c) {
    normalise(m.mean.data() + size_t(c) * size_t(dim), size_t(dim));
  }
  return m;
}

std::vector<int64_t> nearest_class_mean(const ClassMeans& m, const std::vector<double>& feats) {
  SC_CHECK(m.dim > 0 && feats.size() % size_t(m.dim) == 0, "nearest_class_mean: ", feats.size(),
           " values are not rows of ", m.dim);
  SC_CHECK(std::any_of(m.count.begin(), m.count.end(), [](int64_t c) { return c > 0; }),
           "nearest_class_mean: no class has a fit cell");
  const size_t n = feats.size() / size_t(m.dim);
  std::vector<int64_t> out(n, 0);
  std::vector<double> row(static_cast<size_t>(m.dim));
  for (size_t i = 0; i < n; ++i) {
    normalised_row(feats, m.dim, i, row.data());
    double best = -std::numeric_limits<double>::infinity();
    for (int c = 0; c < m.num_classes; ++c) {
      if (m.count[size_t(c)] == 0) continue;
      const double dot =
          dot_rows(m.mean.data() + size_t(c) * size_t(m.dim), row.data(), size_t(m.dim));
      if (dot > best) {
        best = dot;
        out[i] = c;
      }
    }
  }
  return out;
}

ClassMeans fit_cosine_kmeans(const std::vector<double>& feats, int64_t dim, int k, uint64_t seed,
                             int restarts, int max_iters) {
  SC_CHECK(dim > 0 && feats.size() % size_t(dim) == 0, "fit_cosine_kmeans: ", feats.size(),
           " values are not rows of ", dim);
  const size_t n = feats.size() / size_t(dim), D = size_t(dim);
  SC_CHECK(k >= 1 && size_t(k) <= n, "fit_cosine_kmeans: k must be in [1, ", n, "], got ", k);
  SC_CHECK(restarts >= 1 && max_iters >= 1, "fit_cosine_kmeans: needs restarts and iterations");
  const std::vector<double> x = normalised_rows(feats, dim);
  auto dot = [&](const double* a, const double* b) { return dot_rows(a, b, D); };
  ClassMeans best;
  double best_objective = -std::numeric_limits<double>::infinity();
  std::vector<int> assign(n);
  std::vector<double> cos_to(n);
  for (int r = 0; r < restarts; ++r) {
    std::mt19937_64 gen(seed * 0x9e3779b97f4a7c15ull + uint64_t(r));
    auto uniform = [&] { return double(gen() >> 11) * 0x1.0p-53; };
    // k-means++: each next centroid drawn with probability proportional to 1 - (largest cosine
    // to the centroids so far), the squared distance between unit vectors over 2.
    std::vector<double> c(size_t(k) * D);
    std::vector<double> far(n);
    size_t pick = std::min(n - 1, size_t(uniform() * double(n)));
    for (int j = 0; j < k; ++j) {
      std::copy(x.begin() + std::ptrdiff_t(pick * D), x.begin() + std::ptrdiff_t((pick + 1) * D),
                c.begin() + std::ptrdiff_t(size_t(j) * D));
      if (j + 1 == k) break;
      double total = 0;
      for (size_t i = 0; i < n; ++i) {
        const double d = 1.0 - dot(x.data() + i * D, c.data() + size_t(j) * D);
        far[i] = j == 0 ? d : std::min(far[i], d);
        far[i] = std::max(far[i], 0.0);
        total += far[i];
      }
      if (total <= 0) {  // every row on a centroid already: take the next row
        pick = (pick + 1) % n;
        continue;
      }
      double t = uniform() * total;
      pick = n - 1;
      for (size_t i = 0; i < n; ++i) {
        t -= far[i];
        if (t < 0) {
          pick = i;
          break;
        }
      }
    }
    std::fill(assign.begin(), assign.end(), -1);
    std::vector<int64_t> count(static_cast<size_t>(k));
    for (int it = 0; it < max_iters; ++it) {
      bool moved = false;
      for (size_t i = 0; i < n; ++i) {
        int arg = 0;
        double top = -std::numeric_limits<double>::infinity();
        for (int j = 0; j < k; ++j) {
          const double v = dot(x.data() + i * D, c.data() + size_t(j) * D);
          if (v > top) top = v, arg = j;
        }
        moved |= assign[i] != arg;
        assign[i] = arg;
        cos_to[i] = top;
      }
      if (!moved) break;
      std::fill(c.begin(), c.end(), 0.0);
      std::fill(count.begin(), count.end(), 0);
      for (size_t i = 0; i < n; ++i) {
        double* cj = c.data() + size_t(assign[i]) * D;
        for (size_t d = 0; d < D; ++d) cj[d] += x[i * D + d];
        ++count[size_t(assign[i])];
      }
      for (int j = 0; j < k; ++j) {
        double* cj = c.data() + size_t(j) * D;
        if (count[size_t(j)] == 0) {  // re-seed with the row farthest from its centroid
          const size_t i = size_t(std::min_element(cos_to.begin(), cos_to.end()) - cos_to.begin());
          std::copy(x.begin() + std::ptrdiff_t(i * D), x.begin() + std::ptrdiff_t((i + 1) * D), cj);
          cos_to[i] = 1.0;
        }
        normalise(cj, D);
      }
    }
    double objective = 0;
    std::fill(count.begin(), count.end(), 0);
    for (size_t i = 0; i < n; ++i) objective += cos_to[i], ++count[size_t(assign[i])];
    if (objective > best_objective) {
      best_objective = objective;
      best.dim = dim;
      best.num_classes = k;
      best.mean = c;
      best.count = count;
    }
  }
  return best;
}

namespace {
// The balanced cross-entropy of a linear probe's parameters theta = [W (D x C), b (C)] on the
// standardised rows Z (n x D, F64; Zt its transpose), and its gradient when grad is not null.
// The two products with Z run as BLAS matrix products (engine/ops.h).
double probe_loss(const Tensor& Z, const Tensor& Zt, int C, const std::vector<int>& cls,
                  const std::vector<double>& row_weight, const std::vector<bool>& present,
                  double l2, const std::vector<double>& theta, std::vector<double>* grad) {
  const size_t n = size_t(Z.size(0)), D = size_t(Z.size(1)), Cs = size_t(C);
  const std::vector<double> W(theta.begin(), theta.begin() + std::ptrdiff_t(D * Cs));
  const double* b = theta.data() + D * Cs;
  std::vector<double> r =
      matmul(Z, from_vector(W, {int64_t(D), int64_t(C)}, DType::F64)).to_vector();
  double loss = 0;
  for (size_t i = 0; i < n; ++i) {
    double* ri = r.data() + i * Cs;  // logits, then the gradient of the loss in them
    double top = -std::numeric_limits<double>::infinity();
    for (size_t c = 0; c < Cs; ++c)
      if (present[c]) top = std::max(top, ri[c] += b[c]);
    double sum = 0;
    for (size_t c = 0; c < Cs; ++c) {
      ri[c] = present[c] ? std::exp(ri[c] - top) : 0.0;
      sum += ri[c];
    }
    const size_t y = size_t(cls[i]);
    const double wi = row_weight[i];
    loss += wi * (std::log(sum) - std::log(ri[y]));  // -log p_y
    for (size_t c = 0; c < Cs; ++c) ri[c] = wi * (ri[c] / sum - (c == y ? 1.0 : 0.0));
  }
  for (size_t j = 0; j < D * Cs; ++j) loss += 0.5 * l2 * W[j] * W[j];
  if (!grad) return loss;
  const std::vector<double> gW =
      matmul(Zt, from_vector(r, {int64_t(n), int64_t(C)}, DType::F64)).to_vector();
  for (size_t j = 0; j < D * Cs; ++j) (*grad)[j] = gW[j] + l2 * W[j];
  for (size_t c = 0; c < Cs; ++c) {
    double gb = 0;
    for (size_t i = 0; i < n; ++i) gb += r[i * Cs + c];
    (*grad)[D * Cs + c] = gb;
  }
  return loss;
}

// Unit rows (rows of p.dim values) standardised in place under a probe's shift and scale.
void standardise(const LinearProbe& p, std::vector<double>* z) {
  const size_t D = size_t(p.dim);
  for (size_t j = 0; j < z->size(); ++j) (*z)[j] = ((*z)[j] - p.shift[j % D]) * p.scale[j % D];
}
}  // namespace

LinearProbe fit_linear_probe(const std::vector<double>& feats, int64_t dim,
                             const std::vector<int>& cls, int num_classes, double l2,
                             int max_iters) {
  SC_CHECK(dim > 0 && num_classes > 0, "fit_linear_probe: needs dim > 0 and classes > 0");
  SC_CHECK(!cls.empty() && feats.size() == cls.size() * size_t(dim), "fit_linear_probe: ",
           feats.size(), " feature values for ", cls.size(), " cells of ", dim);
  SC_CHECK(l2 >= 0 && std::isfinite(l2) && max_iters >= 1,
           "fit_linear_probe: needs a finite l2 >= 0 and max_iters >= 1");
  const size_t n = cls.size(), D = size_t(dim), Cs = size_t(num_classes);
  LinearProbe p;
  p.dim = dim;
  p.num_classes = num_classes;
  p.count.assign(Cs, 0);
  for (size_t i = 0; i < n; ++i) {
    SC_CHECK(cls[i] >= 0 && cls[i] < num_classes, "fit_linear_probe: label out of range at cell ",
             i);
    ++p.count[size_t(cls[i])];
  }
  // standardise each feature of the unit rows over the fit rows (a constant feature keeps scale 1)
  p.shift.assign(D, 0.0);
  p.scale.assign(D, 1.0);
  std::vector<double> z = normalised_rows(feats, dim), sq(D, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t d = 0; d < D; ++d) {
      const double v = z[i * D + d];
      p.shift[d] += v / double(n), sq[d] += v * v;
    }
  for (size_t d = 0; d < D; ++d) {
    const double var = sq[d] / double(n) - p.shift[d] * p.shift[d];
    if (var > 1e-24) p.scale[d] = 1.0 / std::sqrt(var);
  }
  standardise(p, &z);
  std::vector<bool> present(Cs);
  int classes_present = 0;
  for (size_t c = 0; c < Cs; ++c) present[c] = p.count[c] > 0, classes_present += present[c];
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i)
    w[i] = 1.0 / (double(classes_present) * double(p.count[size_t(cls[i])]));

  // L: half the largest eigenvalue of sum_i w_i [z_i 1][z_i 1]^T (Boehning's bound on the
  // softmax's curvature) plus l2, the eigenvalue by power iteration, with a margin for its error
  const Tensor Z = from_vector(z, {int64_t(n), dim}, DType::F64);
  const Tensor Zt = transpose(Z, 0, 1);
  std::vector<double> v(D + 1);
  for (size_t d = 0; d <= D; ++d) v[d] = 1.0 + 0.01 * double(d % 7);
  double lambda = 0;
  for (int it = 0; it < 100; ++it) {
    std::vector<double> t =
        matmul(Z, from_vector(std::vector<double>(v.begin(), v.end() - 1), {dim, 1}, DType::F64))
            .to_vector();
    double last = 0;
    for (size_t i = 0; i < n; ++i) last += t[i] = w[i] * (t[i] + v[D]);
    std::vector<double> mv = matmul(Zt, from_vector(t, {int64_t(n), 1}, DType::F64)).to_vector();
    mv.push_back(last);
    lambda = std::sqrt(dot_rows(mv.data(), mv.data(), D + 1));
    if (lambda <= 0) break;
    for (size_t d = 0; d <= D; ++d) v[d] = mv[d] / lambda;
  }
  const double L = 1.2 * 0.5 * lambda + l2;
  SC_CHECK(L > 0, "fit_linear_probe: the rows carry no signal");

  // Nesterov's accelerated gradient, restarted when the gradient opposes the last move
  const size_t P = (D + 1) * Cs;
  std::vector<double> theta(P, 0.0), y(P, 0.0), next(P), g(P);
  double t = 1;
  int it = 0;
  for (; it < max_iters; ++it) {
    probe_loss(Z, Zt, num_classes, cls, w, present, l2, y, &g);
    if (dot_rows(g.data(), g.data(), P) < 1e-20) break;
    double along = 0;
    for (size_t j = 0; j < P; ++j) {
      next[j] = y[j] - g[j] / L;
      along += g[j] * (next[j] - theta[j]);
    }
    const double t_next = 0.5 * (1.0 + std::sqrt(1.0 + 4.0 * t * t));
    const double beta = along > 0 ? 0.0 : (t - 1.0) / t_next;
    for (size_t j = 0; j < P; ++j) y[j] = next[j] + beta * (next[j] - theta[j]);
    theta.swap(next);
    t = along > 0 ? 1.0 : t_next;
  }
  p.iterations = it;
  p.loss = probe_loss(Z, Zt, num_classes, cls, w, present, l2, theta, nullptr);
  p.weight.assign(theta.begin(), theta.begin() + std::ptrdiff_t(D * Cs));
  p.bias.assign(theta.begin() + std::ptrdiff_t(D * Cs), theta.end());
  return p;
}

std::vector<int64_t> linear_probe_predict(const LinearProbe& p, const std::vector<double>& feats) {
  SC_CHECK(p.dim > 0 && feats.size() % size_t(p.dim) == 0, "linear_probe_predict: ",
           feats.size(), " values are not rows of ", p.dim);
  SC_CHECK(std::any_of(p.count.begin(), p.count.end(), [](int64_t c) { return c > 0; }),
           "linear_probe_predict: no class has a fit cell");
  const size_t D = size_t(p.dim), Cs = size_t(p.num_classes), n = feats.size() / D;
  std::vector<double> z = normalised_rows(feats, p.dim);
  standardise(p, &z);
  std::vector<int64_t> out(n, 0);
  for (size_t i = 0; i < n; ++i) {
    double best = -std::numeric_limits<double>::infinity();
    for (size_t c = 0; c < Cs; ++c) {
      if (p.count[c] == 0) continue;
      double logit = p.bias[c];
      for (size_t d = 0; d < D; ++d) logit += z[i * D + d] * p.weight[d * Cs + c];
      if (logit > best) best = logit, out[i] = int64_t(c);
    }
  }
  return out;
}

std::vector<double> remove_group_means(const std::vector<double>& feats, int64_t dim,
                                       int64_t rows_per_group) {
  SC_CHECK(
      dim > 0 && rows_per_group > 0 && feats.size() % (size_t(dim) * size_t(rows_per_group)) == 0,
      "remove_group_means: ", feats.size(), " values are not groups of ", rows_per_group,
      " rows of ", dim);
  std::vector<double> out(feats);
  const size_t D = size_t(dim), G = size_t(rows_per_group), group = D * G;
  std::vector<double> mean(D);
  for (size_t g0 = 0; g0 < out.size(); g0 += group) {
    std::fill(mean.begin(), mean.end(), 0.0);
    for (size_t r = 0; r < G; ++r)
      for (size_t d = 0; d < D; ++d) mean[d] += out[g0 + r * D + d];
    for (size_t r = 0; r < G; ++r)
      for (size_t d = 0; d < D; ++d) out[g0 + r * D + d] -= mean[d] / double(G);
  }
  return out;
}

CellSpread cell_spread(const std::vector<double>& feats, int64_t dim,
                       const std::vector<double>& prototypes) {
  SC_CHECK(dim > 0 && !feats.empty() && feats.size() % size_t(dim) == 0 &&
               prototypes.size() % size_t(dim) == 0,
           "cell_spread: ", feats.size(), " values and ", prototypes.size(),
           " prototype values are not rows of ", dim);
  const size_t n = feats.size() / size_t(dim), D = size_t(dim);
  CellSpread s;
  s.direction.assign(D, 0.0);
  std::vector<double> row(D);
  for (size_t i = 0; i < n; ++i) {
    normalised_row(feats, dim, i, row.data());
    for (size_t d = 0; d < D; ++d) s.direction[d] += row[d] / double(n);
  }
  s.resultant_length = std::sqrt(dot_rows(s.direction.data(), s.direction.data(), D));
  for (double& v : s.direction) v = s.resultant_length > 0 ? v / s.resultant_length : 0.0;
  for (size_t k = 0; k < prototypes.size() / D; ++k) {
    normalised_row(prototypes, dim, k, row.data());
    s.cos_to.push_back(dot_rows(row.data(), s.direction.data(), D));
  }
  return s;
}

std::vector<int> majority_class_map(const std::vector<int64_t>& prototype,
                                    const std::vector<int>& cls, int K, int C) {
  SC_CHECK(prototype.size() == cls.size(), "majority_class_map: ", prototype.size(),
           " prototypes for ", cls.size(), " classes");
  SC_CHECK(K >= 1 && C >= 1, "majority_class_map: K and C must be positive");
  std::vector<int64_t> n(size_t(K) * size_t(C), 0);
  for (size_t i = 0; i < cls.size(); ++i) {
    SC_CHECK(prototype[i] >= 0 && prototype[i] < K && cls[i] >= 0 && cls[i] < C,
             "majority_class_map: cell ", i, " has prototype ", prototype[i], " and class ", cls[i],
             " (K ", K, ", C ", C, ")");
    ++n[size_t(prototype[i]) * size_t(C) + size_t(cls[i])];
  }
  std::vector<int> map(size_t(K), 0);
  for (int k = 0; k < K; ++k)
    for (int c = 1; c < C; ++c)
      if (n[size_t(k) * size_t(C) + size_t(c)] > n[size_t(k) * size_t(C) + size_t(map[size_t(k)])])
        map[size_t(k)] = c;
  return map;
}

std::vector<int64_t> map_prototypes(const std::vector<int>& map,
                                    const std::vector<int64_t>& prototype) {
  std::vector<int64_t> out(prototype.size());
  for (size_t i = 0; i < prototype.size(); ++i) {
    SC_CHECK(prototype[i] >= 0 && size_t(prototype[i]) < map.size(), "map_prototypes: cell ", i,
             " has prototype ", prototype[i], " of ", map.size());
    out[i] = map[size_t(prototype[i])];
  }
  return out;
}

std::vector<int> downsample_mode(const uint8_t* cls, int W, int H, int w, int h, int C) {
  std::vector<int> out(size_t(w) * size_t(h));
  std::vector<int64_t> hist(static_cast<size_t>(C));
  for (int gy = 0; gy < h; ++gy)
    for (int gx = 0; gx < w; ++gx) {
      std::fill(hist.begin(), hist.end(), 0);
      const int y0 = gy * H / h, y1 = std::max(y0 + 1, (gy + 1) * H / h);
      const int x0 = gx * W / w, x1 = std::max(x0 + 1, (gx + 1) * W / w);
      for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) {
          const int c = cls[size_t(y) * size_t(W) + size_t(x)];
          SC_CHECK(c < C, "downsample_mode: class ", c, " >= ", C);
          hist[size_t(c)]++;
        }
      out[size_t(gy) * size_t(w) + size_t(gx)] =
          int(std::max_element(hist.begin(), hist.end()) - hist.begin());
    }
  return out;
}

}  // namespace sc
