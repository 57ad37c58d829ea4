#include "model/grouping_score.h"

#include <algorithm>

#include "engine/error.h"

namespace sc {

GroupingScore grouping_score(const std::vector<int64_t>& prototype, const std::vector<int>& cls,
                             int K, int C) {
  SC_CHECK(prototype.size() == cls.size(), "grouping_score: ", prototype.size(),
           " predictions for ", cls.size(), " labels");
  SC_CHECK(K > 0 && C > 0, "grouping_score: needs K > 0 and C > 0");
  std::vector<int64_t> overlap(size_t(K) * size_t(C), 0);
  for (size_t i = 0; i < cls.size(); ++i) {
    SC_CHECK(prototype[i] >= 0 && prototype[i] < K && cls[i] >= 0 && cls[i] < C,
             "grouping_score: label out of range at pixel ", i);
    overlap[size_t(prototype[i]) * size_t(C) + size_t(cls[i])]++;
  }
  std::vector<int> map(size_t(K), -1);
  GroupingScore s;
  for (int k = 0; k < K; ++k) {
    auto row = overlap.begin() + int64_t(k) * C;
    if (std::all_of(row, row + C, [](int64_t v) { return v == 0; })) continue;
    map[size_t(k)] = int(std::max_element(row, row + C) - row);
    ++s.prototypes_used;
  }
  std::vector<int64_t> inter(size_t(C), 0), pred_n(size_t(C), 0), gt_n(size_t(C), 0);
  int64_t correct = 0;
  for (size_t i = 0; i < cls.size(); ++i) {
    const int p = map[size_t(prototype[i])];
    pred_n[size_t(p)]++;
    gt_n[size_t(cls[i])]++;
    if (p == cls[i]) {
      inter[size_t(p)]++;
      ++correct;
    }
  }
  int present = 0;
  double sum = 0;
  for (int c = 0; c < C; ++c) {
    const int64_t uni = pred_n[size_t(c)] + gt_n[size_t(c)] - inter[size_t(c)];
    if (uni == 0) continue;
    ++present;
    sum += double(inter[size_t(c)]) / double(uni);
  }
  s.miou = present ? sum / present : 0.0;
  s.pixel_accuracy = cls.empty() ? 0.0 : double(correct) / double(cls.size());
  return s;
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
