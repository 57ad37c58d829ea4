// scenes.h: the embedded synthetic scene set (no download needed).
//
// A scene is a textured background with a few objects drawn over it in painter's order (so later
// objects occlude earlier ones). Every object belongs to one of 9 classes, shape x colour:
//   shapes  disc, square, triangle (randomly rotated, radius 8%..22% of the shorter side; in the
//           large-object set 18%..32%)
//   colours red, green, blue families (hue +-12 degrees around 0, 120, 240; saturation 0.65..1,
//           value 0.55..1)
// Class id = 1 + 3 * shape + colour; class 0 is the background. The texture of an object (plain
// with shading, stripes, checks or dots, in two tones of its colour) is a nuisance: it is drawn
// at random and does not define the class. Backgrounds are unsaturated (saturation <= 0.25) with
// their own textures (smooth noise, stripes, checks, gradient), and every pixel gets a little
// noise. The layout is defined in normalised coordinates and depends only on (seed, index), so a
// scene rendered at two sizes shows the same picture.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/image.h"

namespace sc {
namespace data {

constexpr int kSceneShapes = 3;
constexpr int kSceneColors = 3;
constexpr int kSceneClasses = 1 + kSceneShapes * kSceneColors;  // 10, background included

// "background", "red disc", "green disc", ..., "blue triangle".
std::string scene_class_name(int cls);

struct SceneObject {
  int cls = 1;                // 1..9
  double cx = 0.5, cy = 0.5;  // centre, fractions of width and height
  double radius = 0.1;        // fraction of min(width, height)
  double angle = 0.0;         // radians
  double hue = 0.0, sat = 1.0, val = 1.0;
  int texture = 0;  // 0 plain, 1 stripes, 2 checks, 3 dots
  double tex_freq = 1.0, tex_phase = 0.0, tex_dark = 0.7;
};

struct SceneLayout {
  double bg_hue = 0.0, bg_sat = 0.0, bg_val = 0.5;
  int bg_texture = 0;  // 0 smooth noise, 1 stripes, 2 checks, 3 gradient
  double bg_freq = 1.0, bg_angle = 0.0, bg_amp = 0.2;
  uint64_t bg_noise_seed = 0;
  std::vector<SceneObject> objects;  // drawn in order
};

// Which objects a scene set draws. Standard: 2..5 objects of radius 8%..22% of the shorter side
// (at 224 px and stride 32 an object spans about 1 to 3 cells; 82 % of the cells are
// background). Large: 1..3 objects of radius 18%..32% (about 2.5 to 4.5 cells across), for short
// runs in which the slots are to be seen (docs/training.md). Large hues: the large set's objects,
// but every class has a hue of its own, 40 degrees apart (class c at 40 * (c - 1) degrees, +-8),
// instead of the three colour families: colour alone tells the nine classes apart, which a short
// run can learn where shape is not learnt (docs/training.md). The class ids, shapes and everything
// else are drawn alike; in this set the names "red disc" etc. name the ids, not the colours.
// Crowded hues: 5..8 objects of radius 22%..36% in the large-hues colours, overlapping, so the
// ten classes cover about even shares of the picture (about 29 % of the stride-32 cells at
// 224 px are background, 6-12 % each object class; 71 % background in the large sets): a set in
// which a grouping that balances its groups over a batch, as SlotCon's centering pushes the
// teacher to, is not at odds with the true classes (docs/training.md, the eighth round).
enum class SceneObjects { Standard, Large, LargeHues, CrowdedHues };

// "standard" | "large" | "large_hues" | "crowded_hues"; throws sc::Error on anything else.
SceneObjects parse_scene_objects(const std::string& name);
const char* scene_objects_name(SceneObjects objects);

// The centre hue of class `cls` (1..9) in this set, as a fraction of the colour wheel.
double scene_class_hue(int cls, SceneObjects objects);

// The layout of scene `index` of the set with this seed.
SceneLayout make_scene_layout(uint64_t seed, int64_t index,
                              SceneObjects objects = SceneObjects::Standard);

struct Scene {
  ImageU8 image;
  std::vector<uint8_t> class_map;  // width * height class ids, row-major
};

// Renders scene `index` at width x height pixels (both >= 8).
void render_scene(uint64_t seed, int64_t index, int width, int height, Scene* out,
                  SceneObjects objects = SceneObjects::Standard);
void render_layout(const SceneLayout& layout, uint64_t noise_seed, int width, int height,
                   Scene* out);

// Writes scenes 0..count-1 as <dir>/images/scene_NNNNNN.<png|jpg> and their class maps as
// <dir>/class_maps/scene_NNNNNN.png (8-bit gray, pixel value = class id), plus
// <dir>/classes.txt (one "id name" per line). Creates the folders. Throws sc::Error when a file
// cannot be written. format is "png" or "jpg".
void write_scenes(const std::string& dir, int64_t count, uint64_t seed, int width, int height,
                  const std::string& format = "png", int jpeg_quality = 90);

// The class map seen by an augmented view: out[y * out_w + x] = class at the source pixel shown
// at the centre of view pixel (x, y) (nearest neighbour through the view's crop and flip).
void view_class_map(const uint8_t* class_map, int width, int height, const ViewParams& view,
                    int out_w, int out_h, uint8_t* out);

}  // namespace data
}  // namespace sc
