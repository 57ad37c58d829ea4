#include "data/scenes.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "data/rng.h"
#include "engine/error.h"

namespace sc {
namespace data {
namespace {

constexpr double kPi = 3.14159265358979323846;

void hsv_to_rgb(double h, double s, double v, double rgb[3]) {
  h = h - std::floor(h);
  const double hh = h * 6.0;
  const int i = int(hh) % 6;
  const double f = hh - std::floor(hh);
  const double p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  switch (i) {
    case 0:
      rgb[0] = v, rgb[1] = t, rgb[2] = p;
      break;
    case 1:
      rgb[0] = q, rgb[1] = v, rgb[2] = p;
      break;
    case 2:
      rgb[0] = p, rgb[1] = v, rgb[2] = t;
      break;
    case 3:
      rgb[0] = p, rgb[1] = q, rgb[2] = v;
      break;
    case 4:
      rgb[0] = t, rgb[1] = p, rgb[2] = v;
      break;
    default:
      rgb[0] = v, rgb[1] = p, rgb[2] = q;
      break;
  }
}

inline uint8_t to_u8(double x) {
  x = x * 255.0 + 0.5;
  return uint8_t(x <= 0 ? 0 : (x >= 255 ? 255 : int(x)));
}

inline uint32_t hash3(uint32_t x, uint32_t y, uint32_t s) {
  uint32_t h = x * 0x8da6b343u ^ y * 0xd8163841u ^ s * 0xcb1ab31fu;
  h ^= h >> 15;
  h *= 0x2c1b3c6du;
  h ^= h >> 12;
  h *= 0x297a2d39u;
  h ^= h >> 15;
  return h;
}

// Smooth value noise on a G x G lattice over [0, 1]^2.
struct ValueNoise {
  int g = 4;
  std::vector<double> v;
  ValueNoise(uint64_t seed, int grid) : g(grid), v(size_t(grid + 1) * size_t(grid + 1)) {
    Rng rng(seed, 0x6e6f697365ull);
    for (double& x : v) x = rng.uniform();
  }
  double at(double u, double w) const {
    const double x = std::min(std::max(u, 0.0), 1.0) * g;
    const double y = std::min(std::max(w, 0.0), 1.0) * g;
    int ix = std::min(int(x), g - 1), iy = std::min(int(y), g - 1);
    double fx = x - ix, fy = y - iy;
    fx = fx * fx * (3 - 2 * fx);
    fy = fy * fy * (3 - 2 * fy);
    const double a = v[size_t(iy) * (g + 1) + ix], b = v[size_t(iy) * (g + 1) + ix + 1];
    const double c = v[size_t(iy + 1) * (g + 1) + ix], d = v[size_t(iy + 1) * (g + 1) + ix + 1];
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy;
  }
};

bool inside_shape(int shape, double lx, double ly) {
  switch (shape) {
    case 0:
      return lx * lx + ly * ly <= 1.0;  // disc
    case 1:
      return std::fabs(lx) <= 0.82 && std::fabs(ly) <= 0.82;  // square
    default: {
      // Equilateral triangle, circumradius 1.3 (inradius 0.65), one vertex up.
      const double ri = 0.65;
      const double c30 = 0.8660254037844386;
      if (ly > ri) return false;                    // bottom edge (y grows downwards)
      if (-c30 * lx - 0.5 * ly > ri) return false;  // upper-left edge
      if (c30 * lx - 0.5 * ly > ri) return false;   // upper-right edge
      return true;
    }
  }
}

// Whether the set gives every class a hue of its own (else the three colour families).
bool class_hues(SceneObjects objects) {
  return objects == SceneObjects::LargeHues || objects == SceneObjects::CrowdedHues;
}

}  // namespace

std::string scene_class_name(int cls) {
  static const char* shapes[kSceneShapes] = {"disc", "square", "triangle"};
  static const char* colors[kSceneColors] = {"red", "green", "blue"};
  if (cls == 0) return "background";
  SC_CHECK(cls >= 1 && cls < kSceneClasses, "scene_class_name: no class ", cls);
  return std::string(colors[(cls - 1) % kSceneColors]) + " " + shapes[(cls - 1) / kSceneColors];
}

SceneObjects parse_scene_objects(const std::string& name) {
  if (name == "standard") return SceneObjects::Standard;
  if (name == "large") return SceneObjects::Large;
  if (name == "large_hues") return SceneObjects::LargeHues;
  if (name == "crowded_hues") return SceneObjects::CrowdedHues;
  throw Error(str_cat(
      "synthetic scene objects must be 'standard', 'large', 'large_hues' or 'crowded_hues', got '",
      name, "'"));
}

const char* scene_objects_name(SceneObjects objects) {
  switch (objects) {
    case SceneObjects::Large:
      return "large";
    case SceneObjects::LargeHues:
      return "large_hues";
    case SceneObjects::CrowdedHues:
      return "crowded_hues";
    default:
      return "standard";
  }
}

double scene_class_hue(int cls, SceneObjects objects) {
  SC_CHECK(cls >= 1 && cls < kSceneClasses, "scene_class_hue: no class ", cls);
  return class_hues(objects) ? double(cls - 1) / double(kSceneClasses - 1)
                             : double((cls - 1) % kSceneColors) / kSceneColors;
}

SceneLayout make_scene_layout(uint64_t seed, int64_t index, SceneObjects objects) {
  const bool large = objects != SceneObjects::Standard;
  const bool crowded = objects == SceneObjects::CrowdedHues;
  const double hue_jitter = class_hues(objects) ? 8.0 : 12.0;  // degrees
  Rng rng(seed, uint64_t(index), 0x7363656e65ull);
  SceneLayout L;
  L.bg_hue = rng.uniform();
  L.bg_sat = rng.uniform(0.0, 0.25);
  L.bg_val = rng.uniform(0.3, 0.8);
  L.bg_texture = int(rng.randint(0, 3));
  L.bg_freq = rng.uniform(2.0, 8.0);
  L.bg_angle = rng.uniform(0.0, kPi);
  L.bg_amp = rng.uniform(0.08, 0.25);
  L.bg_noise_seed = rng.next_u64();
  const int n =
      crowded ? int(rng.randint(5, 8)) : (large ? int(rng.randint(1, 3)) : int(rng.randint(2, 5)));
  for (int i = 0; i < n; ++i) {
    SceneObject o;
    const int shape = int(rng.randint(0, kSceneShapes - 1));
    const int color = int(rng.randint(0, kSceneColors - 1));
    o.cls = 1 + shape * kSceneColors + color;
    o.cx = rng.uniform(0.08, 0.92);
    o.cy = rng.uniform(0.08, 0.92);
    o.radius = crowded ? rng.uniform(0.22, 0.36)
                       : (large ? rng.uniform(0.18, 0.32) : rng.uniform(0.08, 0.22));
    o.angle = rng.uniform(0.0, 2 * kPi);
    o.hue = scene_class_hue(o.cls, objects) + rng.uniform(-hue_jitter, hue_jitter) / 360.0;
    o.sat = rng.uniform(0.65, 1.0);
    o.val = rng.uniform(0.55, 1.0);
    o.texture = int(rng.randint(0, 3));
    o.tex_freq = rng.uniform(1.5, 3.5);
    o.tex_phase = rng.uniform(0.0, 1.0);
    o.tex_dark = rng.uniform(0.55, 0.85);
    L.objects.push_back(o);
  }
  return L;
}

void render_layout(const SceneLayout& L, uint64_t noise_seed, int W, int H, Scene* out) {
  SC_CHECK(W >= 8 && H >= 8, "render_scene: size must be at least 8x8, got ", W, "x", H);
  out->image.resize(W, H);
  out->class_map.assign(size_t(W) * size_t(H), 0);
  const double m = std::min(W, H);
  const ValueNoise noise(L.bg_noise_seed, 3 + int(L.bg_freq / 2));
  double base[3];
  hsv_to_rgb(L.bg_hue, L.bg_sat, 1.0, base);
  const double ca = std::cos(L.bg_angle), sa = std::sin(L.bg_angle);
  const uint32_t ns = uint32_t(noise_seed ^ (noise_seed >> 32));
  // Background.
  for (int y = 0; y < H; ++y) {
    uint8_t* row = out->image.row(y);
    for (int x = 0; x < W; ++x) {
      const double u = (x + 0.5) / m, w = (y + 0.5) / m;
      const double t = u * ca + w * sa;
      double k;
      switch (L.bg_texture) {
        case 0:
          k = 1.0 + 2.0 * L.bg_amp * (noise.at((x + 0.5) / W, (y + 0.5) / H) - 0.5);
          break;
        case 1:
          k = 1.0 + L.bg_amp * std::sin(2 * kPi * L.bg_freq * t);
          break;
        case 2:
          k = ((int(std::floor(u * L.bg_freq)) + int(std::floor(w * L.bg_freq))) & 1)
                  ? 1.0 + L.bg_amp
                  : 1.0 - L.bg_amp;
          break;
        default:
          k = 1.0 + L.bg_amp * (t - 0.7);
          break;  // linear ramp
      }
      const double v = L.bg_val * k;
      for (int c = 0; c < 3; ++c) row[3 * x + c] = to_u8(base[c] * v);
    }
  }
  // Objects, painter's order.
  for (const SceneObject& o : L.objects) {
    const int shape = (o.cls - 1) / kSceneColors;
    double light[3], dark[3];
    hsv_to_rgb(o.hue, o.sat, o.val, light);
    hsv_to_rgb(o.hue, o.sat, o.val * o.tex_dark, dark);
    const double r = o.radius * m;
    const double cxp = o.cx * W, cyp = o.cy * H;
    const double ext = 1.35 * r;
    const int x0 = std::max(0, int(std::floor(cxp - ext))), x1 = std::min(W, int(cxp + ext) + 1);
    const int y0 = std::max(0, int(std::floor(cyp - ext))), y1 = std::min(H, int(cyp + ext) + 1);
    const double c = std::cos(o.angle), s = std::sin(o.angle);
    for (int y = y0; y < y1; ++y) {
      uint8_t* row = out->image.row(y);
      uint8_t* cls = out->class_map.data() + size_t(y) * W;
      for (int x = x0; x < x1; ++x) {
        const double dx = (x + 0.5 - cxp) / r, dy = (y + 0.5 - cyp) / r;
        const double lx = c * dx + s * dy, ly = -s * dx + c * dy;
        if (!inside_shape(shape, lx, ly)) continue;
        bool use_dark = false;
        double shade = 1.0;
        switch (o.texture) {
          case 0:
            shade = 1.0 + 0.18 * lx;
            break;
          case 1:
            use_dark = std::sin(2 * kPi * (o.tex_freq * lx + o.tex_phase)) > 0;
            break;
          case 2:
            use_dark =
                ((int(std::floor(o.tex_freq * lx + 8)) + int(std::floor(o.tex_freq * ly + 8))) &
                 1) != 0;
            break;
          default: {
            const double fx = o.tex_freq * lx + o.tex_phase, fy = o.tex_freq * ly + o.tex_phase;
            const double ddx = fx - std::floor(fx) - 0.5, ddy = fy - std::floor(fy) - 0.5;
            use_dark = ddx * ddx + ddy * ddy < 0.09;
            break;
          }
        }
        const double* col = use_dark ? dark : light;
        for (int ch = 0; ch < 3; ++ch) row[3 * x + ch] = to_u8(col[ch] * shade);
        cls[x] = uint8_t(o.cls);
      }
    }
  }
  // Pixel noise (+-6 levels).
  for (int y = 0; y < H; ++y) {
    uint8_t* row = out->image.row(y);
    for (int x = 0; x < W; ++x) {
      const uint32_t h = hash3(uint32_t(x), uint32_t(y), ns);
      for (int ch = 0; ch < 3; ++ch) {
        const int d = int((h >> (8 * ch)) % 13u) - 6;
        const int v = row[3 * x + ch] + d;
        row[3 * x + ch] = uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
      }
    }
  }
}

void render_scene(uint64_t seed, int64_t index, int width, int height, Scene* out,
                  SceneObjects objects) {
  render_layout(make_scene_layout(seed, index, objects), hash_combine(seed, uint64_t(index)), width,
                height, out);
}

void write_scenes(const std::string& dir, int64_t count, uint64_t seed, int width, int height,
                  const std::string& format, int jpeg_quality) {
  namespace fs = std::filesystem;
  SC_CHECK(format == "png" || format == "jpg", "write_scenes: format must be png or jpg, got ",
           format);
  SC_CHECK(count >= 0, "write_scenes: negative count");
  std::error_code ec;
  fs::create_directories(fs::path(dir) / "images", ec);
  SC_CHECK(!ec, "write_scenes: cannot create ", (fs::path(dir) / "images").string(), ": ",
           ec.message());
  fs::create_directories(fs::path(dir) / "class_maps", ec);
  SC_CHECK(!ec, "write_scenes: cannot create ", (fs::path(dir) / "class_maps").string(), ": ",
           ec.message());
  {
    std::ofstream names(fs::path(dir) / "classes.txt");
    SC_CHECK(names.good(), "write_scenes: cannot write ", dir, "/classes.txt");
    for (int c = 0; c < kSceneClasses; ++c) names << c << " " << scene_class_name(c) << "\n";
  }
  Scene scene;
  char name[64];
  for (int64_t i = 0; i < count; ++i) {
    render_scene(seed, i, width, height, &scene);
    std::snprintf(name, sizeof(name), "scene_%06lld", static_cast<long long>(i));
    const std::string img =
        (fs::path(dir) / "images" / (std::string(name) + "." + format)).string();
    if (format == "png") {
      write_png(img, scene.image.rgb.data(), width, height, 3);
    } else {
      write_jpeg(img, scene.image.rgb.data(), width, height, 3, jpeg_quality);
    }
    write_png((fs::path(dir) / "class_maps" / (std::string(name) + ".png")).string(),
              scene.class_map.data(), width, height, 1);
  }
}

void view_class_map(const uint8_t* class_map, int W, int H, const ViewParams& view, int out_w,
                    int out_h, uint8_t* out) {
  for (int y = 0; y < out_h; ++y) {
    const double v = (y + 0.5) / out_h;
    for (int x = 0; x < out_w; ++x) {
      double sx, sy;
      view_to_source(view, (x + 0.5) / out_w, v, &sx, &sy);
      const int ix = std::min(W - 1, std::max(0, int(std::floor(sx))));
      const int iy = std::min(H - 1, std::max(0, int(std::floor(sy))));
      out[size_t(y) * out_w + x] = class_map[size_t(iy) * W + ix];
    }
  }
}

}  // namespace data
}  // namespace sc
