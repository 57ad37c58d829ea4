// curves.cpp: training curves as a PNG (see curves.h): lines on a white canvas, axes with ticks,
// labels in a built-in 5x7 font drawn at twice its size.
#include "apps/curves.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "data/image.h"
#include "engine/error.h"

namespace sc {
namespace {

namespace fs = std::filesystem;

// 5x7 glyphs: 7 rows, bit 4 the leftmost column.
const std::map<char, std::array<uint8_t, 7>>& font() {
  static const std::map<char, std::array<uint8_t, 7>> f = {
      {'0', {14, 17, 19, 21, 25, 17, 14}}, {'1', {4, 12, 4, 4, 4, 4, 14}},
      {'2', {14, 17, 1, 2, 4, 8, 31}},     {'3', {31, 2, 4, 2, 1, 17, 14}},
      {'4', {2, 6, 10, 18, 31, 2, 2}},     {'5', {31, 16, 30, 1, 1, 17, 14}},
      {'6', {6, 8, 16, 30, 17, 17, 14}},   {'7', {31, 1, 2, 4, 8, 8, 8}},
      {'8', {14, 17, 17, 14, 17, 17, 14}}, {'9', {14, 17, 17, 15, 1, 2, 12}},
      {'.', {0, 0, 0, 0, 0, 12, 12}},      {'-', {0, 0, 0, 31, 0, 0, 0}},
      {'+', {0, 4, 4, 31, 4, 4, 0}},       {'(', {2, 4, 8, 8, 8, 4, 2}},
      {')', {8, 4, 2, 2, 2, 4, 8}},        {',', {0, 0, 0, 0, 12, 4, 8}},
      {'/', {1, 2, 2, 4, 8, 8, 16}},       {' ', {0, 0, 0, 0, 0, 0, 0}},
      {'I', {14, 4, 4, 4, 4, 4, 14}},      {'U', {17, 17, 17, 17, 17, 17, 14}},
      {'a', {0, 0, 14, 1, 15, 17, 15}},    {'b', {16, 16, 22, 25, 17, 17, 30}},
      {'c', {0, 0, 14, 16, 16, 17, 14}},   {'d', {1, 1, 13, 19, 17, 17, 15}},
      {'e', {0, 0, 14, 17, 31, 16, 14}},   {'f', {6, 9, 8, 28, 8, 8, 8}},
      {'g', {0, 15, 17, 17, 15, 1, 14}},   {'h', {16, 16, 22, 25, 17, 17, 17}},
      {'i', {4, 0, 12, 4, 4, 4, 14}},      {'j', {2, 0, 6, 2, 2, 18, 12}},
      {'k', {16, 16, 18, 20, 24, 20, 18}}, {'l', {12, 4, 4, 4, 4, 4, 14}},
      {'m', {0, 0, 26, 21, 21, 17, 17}},   {'n', {0, 0, 22, 25, 17, 17, 17}},
      {'o', {0, 0, 14, 17, 17, 17, 14}},   {'p', {0, 0, 30, 17, 30, 16, 16}},
      {'q', {0, 0, 13, 19, 15, 1, 1}},     {'r', {0, 0, 22, 25, 16, 16, 16}},
      {'s', {0, 0, 14, 16, 14, 1, 30}},    {'t', {8, 8, 28, 8, 8, 9, 6}},
      {'u', {0, 0, 17, 17, 17, 19, 13}},   {'v', {0, 0, 17, 17, 17, 10, 4}},
      {'w', {0, 0, 17, 17, 21, 21, 10}},   {'x', {0, 0, 17, 10, 4, 10, 17}},
      {'y', {0, 0, 17, 17, 15, 1, 14}},    {'z', {0, 0, 31, 2, 4, 8, 31}},
  };
  return f;
}

constexpr int kScale = 2;                   // font pixels per glyph pixel
constexpr int kCharW = 6 * kScale, kCharH = 7 * kScale;

struct Canvas {
  int w, h;
  std::vector<unsigned char> px;
  Canvas(int w_, int h_) : w(w_), h(h_), px(size_t(w_) * size_t(h_) * 3, 255) {}
  void set(int x, int y, unsigned rgb) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    unsigned char* p = &px[(size_t(y) * size_t(w) + size_t(x)) * 3];
    p[0] = (rgb >> 16) & 255;
    p[1] = (rgb >> 8) & 255;
    p[2] = rgb & 255;
  }
  void rect(int x0, int y0, int x1, int y1, unsigned rgb) {
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) set(x, y, rgb);
  }
  // a line two pixels thick
  void line(double x0, double y0, double x1, double y1, unsigned rgb) {
    const int n = int(std::max(std::fabs(x1 - x0), std::fabs(y1 - y0))) + 1;
    for (int i = 0; i <= n; ++i) {
      const double t = double(i) / n;
      const int x = int(std::lround(x0 + (x1 - x0) * t)), y = int(std::lround(y0 + (y1 - y0) * t));
      rect(x, y, x + 1, y + 1, rgb);
    }
  }
  void text(int x, int y, const std::string& s, unsigned rgb) {
    for (char c : s) {
      auto it = font().find(c);
      if (it != font().end())
        for (int r = 0; r < 7; ++r)
          for (int col = 0; col < 5; ++col)
            if (it->second[size_t(r)] & (16 >> col))
              rect(x + col * kScale, y + r * kScale, x + col * kScale + kScale - 1,
                   y + r * kScale + kScale - 1, rgb);
      x += kCharW;
    }
  }
};

std::string fmt_num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

// About n round tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi, int n) {
  const double raw = (hi - lo) / n, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step)
    t.push_back(std::fabs(v) < 1e-12 * step ? 0.0 : v);
  return t;
}

void draw_panel(Canvas& c, const CurvePanel& p, int top, int height) {
  const int left = 90, right = c.w - 20, ptop = top + 30, pbot = top + height - 40;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const Curve& cv : p.curves)
    for (const CurvePoint& q : cv.points) {
      if (!std::isfinite(q.value) || !std::isfinite(q.step)) continue;
      x0 = std::min(x0, q.step);
      x1 = std::max(x1, q.step);
      y0 = std::min(y0, q.value);
      y1 = std::max(y1, q.value);
    }
  c.text(left, top + 6, p.title, 0x202020);
  if (!(x0 <= x1)) {
    c.text(left, (ptop + pbot) / 2, "no points yet", 0x808080);
    return;
  }
  if (p.fixed_unit_range) {
    y0 = 0;
    y1 = 1;
  }
  if (x1 - x0 < 1) x1 = x0 + 1;
  if (y1 - y0 < 1e-9) {
    y0 -= 0.5;
    y1 += 0.5;
  } else if (!p.fixed_unit_range) {
    const double pad = 0.05 * (y1 - y0);
    y0 -= pad;
    y1 += pad;
  }
  auto X = [&](double s) { return left + (s - x0) / (x1 - x0) * (right - left); };
  auto Y = [&](double v) { return pbot - (v - y0) / (y1 - y0) * (pbot - ptop); };
  for (double t : ticks(y0, y1, 5)) {
    const int y = int(std::lround(Y(t)));
    for (int x = left; x <= right; x += 4) c.set(x, y, 0xd0d0d0);  // dotted grid
    const std::string s = fmt_num(t);
    c.text(left - 8 - kCharW * int(s.size()), y - kCharH / 2, s, 0x404040);
  }
  for (double t : ticks(x0, x1, 6)) {
    const int x = int(std::lround(X(t)));
    c.rect(x, pbot, x, pbot + 5, 0x404040);
    const std::string s = fmt_num(t);
    c.text(x - kCharW * int(s.size()) / 2, pbot + 9, s, 0x404040);
  }
  c.rect(left, ptop, left, pbot, 0x404040);
  c.rect(left, pbot, right, pbot, 0x404040);
  c.text(right - kCharW * 4, pbot + 9 + kCharH + 2, "step", 0x404040);
  int lx = left + 20 + kCharW * int(p.title.size());
  for (const Curve& cv : p.curves) {
    const CurvePoint* prev = nullptr;
    for (const CurvePoint& q : cv.points) {
      if (!std::isfinite(q.value) || !std::isfinite(q.step)) {
        prev = nullptr;
        continue;
      }
      if (prev) c.line(X(prev->step), Y(prev->value), X(q.step), Y(q.value), cv.rgb);
      const int px = int(std::lround(X(q.step))), py = int(std::lround(Y(q.value)));
      if (cv.points.size() < 40) c.rect(px - 2, py - 2, px + 2, py + 2, cv.rgb);  // few: marks
      prev = &q;
    }
    c.rect(lx, top + 8, lx + 18, top + 8 + kCharH - 4, cv.rgb);  // legend swatch
    c.text(lx + 24, top + 6, cv.label, 0x202020);
    lx += 24 + kCharW * int(cv.label.size() + 2);
  }
}

// The lines of a JSON-lines file that parse as objects.
std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::vector<nlohmann::json> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object()) out.push_back(std::move(j));
  }
  return out;
}

double num(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : NAN;
}

}  // namespace

std::vector<unsigned char> render_curves(const std::vector<CurvePanel>& panels, int width,
                                         int panel_height) {
  SC_CHECK(width >= 200 && panel_height >= 100 && !panels.empty(),
           "render_curves: needs at least one panel of 200 x 100 pixels");
  Canvas c(width, panel_height * int(panels.size()));
  for (size_t i = 0; i < panels.size(); ++i) draw_panel(c, panels[i], int(i) * panel_height, panel_height);
  return std::move(c.px);
}

std::string write_training_curves(const std::string& output_dir) {
  const fs::path dir(output_dir);
  const std::vector<nlohmann::json> m = read_jsonl(dir / "metrics.jsonl");
  const std::vector<nlohmann::json> g = read_jsonl(dir / "grouping.jsonl");
  if (m.empty() && g.empty()) return "";
  CurvePanel loss{"training loss", {{"total", {}, 0x202020}, {"group", {}, 0x1f77b4},
                                    {"contrast", {}, 0xd62728}}, false};
  for (const nlohmann::json& j : m) {
    const double s = num(j, "step");
    loss.curves[0].points.push_back({s, num(j, "loss")});
    loss.curves[1].points.push_back({s, num(j, "group")});
    loss.curves[2].points.push_back({s, num(j, "contrast")});
  }
  CurvePanel score{"grouping score (held-out scenes)",
                   {{"mIoU", {}, 0x2ca02c}, {"pixel accuracy", {}, 0x9467bd}}, true};
  for (const nlohmann::json& j : g) {
    const double s = num(j, "step");
    score.curves[0].points.push_back({s, num(j, "miou")});
    score.curves[1].points.push_back({s, num(j, "pixel_accuracy")});
  }
  std::vector<CurvePanel> panels{loss};
  if (!g.empty()) panels.push_back(score);
  const int W = 960, H = 320;
  const std::vector<unsigned char> px = render_curves(panels, W, H);
  const std::string path = (dir / "curves.png").string();
  data::write_png(path, px.data(), W, H * int(panels.size()), 3);
  return path;
}

}  // namespace sc
