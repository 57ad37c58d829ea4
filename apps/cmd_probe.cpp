// slotcon probe: what a checkpoint's teacher tells apart on the synthetic scenes: its prototypes
// (the grouping score, and each read as its majority class), a nearest-class-mean probe and a
// linear probe of its projected map and of its backbone's map (fit on training scenes with their
// classes), the same maps grouped without labels by k-means into as many groups as there are
// prototypes, and how the projected cells spread about the prototypes; all scored on the
// held-out scenes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/run_model.h"
#include "data/loader.h"
#include "data/scenes.h"
#include "engine/error.h"
#include "model/grouping_score.h"
#include "model/slotcon.h"
#include "model/train_config.h"

namespace sc {
namespace app {
namespace {

void probe_usage(FILE* out) {
  std::fprintf(
      out,
      "usage: slotcon probe CHECKPOINT [--fit N] [--l2 X] [--count N] [--size S] [--config FILE]\n"
      "                     [--device auto|cpu|cuda]\n"
      "       slotcon probe --init --config FILE [options]\n\n"
      "What the teacher tells apart on the synthetic scenes of the run's seed and scene set\n"
      "(config keys seed, synthetic_objects), cell by cell at the stride of its map, read\n"
      "these ways and scored as the grouping score is (mIoU over the classes, one-to-one):\n"
      "  prototypes       each cell's arg-max prototype: the grouping score `slotcon train`\n"
      "                   logs (grouping.jsonl)\n"
      "  prototypes, majority\n"
      "                   each prototype read as the class it shares most cells with on the\n"
      "                   fit scenes (many to one): how class-pure the prototypes are, however\n"
      "                   many of them share a class, which the one-to-one score counts wrong\n"
      "  projector, mean  nearest class mean of the projected map (D values per cell)\n"
      "  backbone, mean   nearest class mean of the backbone's map (512 per cell for a\n"
      "                   ResNet-18, 2048 for a ResNet-50): what the network carried into\n"
      "                   detection or segmentation tells apart without any trained head\n"
      "  projector, linear probe / backbone, linear probe\n"
      "                   a linear classifier of each map fit with the true classes (class-\n"
      "                   balanced logistic regression): the standard linear probe. The\n"
      "                   prototypes' arg-max is a linear classifier of the projected map, so\n"
      "                   the projector's row bounds what any prototypes could score there\n"
      "  projector, k-means / backbone, k-means\n"
      "                   the same maps grouped without labels: spherical k-means into K\n"
      "                   groups (K = the run's prototypes) on the fit scenes' cells, each\n"
      "                   held-out cell to its nearest centroid: what a grouping learnt without\n"
      "                   labels could find in these features; \"scene mean removed\" first\n"
      "                   subtracts each scene's mean cell\n"
      "and a last line: how tightly the projected cells crowd round one direction (mean\n"
      "resultant length) and that direction's cosines with the prototypes.\n"
      "The linear probes also print their mIoU on the scenes they were fit on, with their\n"
      "final loss and iterations, to show how far the fit went.\n"
      "The class means are averaged (features scaled to unit length) over the cells of training\n"
      "scenes 0..N-1 with their true classes, then every cell of the held-out scenes (those the\n"
      "grouping score uses) takes the class of the nearest mean. A readout far above the\n"
      "prototypes' says the backbone knows more than the slots show.\n\n"
      "  --init         the run's initial state (the config's seed) instead of a checkpoint:\n"
      "                 what a randomly initialised network already tells apart\n"
      "  --fit N        training scenes the class means and linear probes are fit on\n"
      "                 (default 256)\n"
      "  --l2 X         the linear probes' penalty on their weights (default 0.01; the\n"
      "                 features are standardised, so it does not depend on their scale)\n"
      "  --count N      held-out scenes scored (default: the config's score_images, 64 when\n"
      "                 that is 0)\n"
      "  --size S       pixels per scene side (default: the config's score_size, else\n"
      "                 image_size)\n"
      "  --config FILE  the run's JSON config (needed with --init, and for a state file without\n"
      "                 one in its metadata)\n"
      "  --device D     auto (the GPU when present), cpu or cuda (default auto)\n");
}

// At most this many feature values are held per readout (2 GiB of doubles).
constexpr int64_t kMaxProbeValues = int64_t(1) << 28;

// The per-cell rows of a (B, C, h, w) map: B*h*w rows of C values, in (b, y, x) order.
void append_cells(const Tensor& map, std::vector<double>* rows) {
  const Tensor m = map.to(Device::cpu()).contiguous();
  const int64_t B = m.size(0), C = m.size(1), hw = m.size(2) * m.size(3);
  const std::vector<double> v = m.to_vector();
  const size_t base = rows->size();
  rows->resize(base + size_t(B * hw * C));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < hw; ++p)
        (*rows)[base + size_t((b * hw + p) * C + c)] = v[size_t((b * C + c) * hw + p)];
}

struct Cells {
  std::vector<double> projected, backbone;  // rows of D and of the backbone's channels
  std::vector<int64_t> prototype;           // arg-max prototype per cell
  std::vector<int> cls;                     // true (majority) class per cell
  int64_t dim_projected = 0, dim_backbone = 0, h = 0, w = 0;
};

// The teacher's cells on scenes first..first+count-1, in chunks of 16 scenes.
Cells teacher_cells(SlotConModel& model, const TrainConfig& cfg, data::SceneObjects objects,
                    int64_t first, int64_t count, int size, Device dev) {
  Cells out;
  for (int64_t i0 = 0; i0 < count; i0 += 16) {
    const int64_t n = std::min<int64_t>(16, count - i0);
    const data::SceneBatch sb = data::render_scene_batch(cfg.seed, first + i0, n, size, objects);
    const Tensor images = sb.images.to(dev);
    Tensor backbone;
    const Tensor projected = model.teacher_maps(images, &backbone);
    out.dim_projected = projected.size(1);
    out.dim_backbone = backbone.size(1);
    out.h = projected.size(2);
    out.w = projected.size(3);
    // known from the first chunk: the values all of these scenes' cells will hold
    SC_CHECK(count * out.h * out.w * out.dim_backbone <= kMaxProbeValues, count, " scenes of ",
             out.h, "x", out.w, " cells of ", out.dim_backbone, " backbone values pass ",
             kMaxProbeValues, " values; lower --fit, --count or --size");
    append_cells(projected, &out.projected);
    append_cells(backbone, &out.backbone);
    const std::vector<double> pv = model.prototypes_of_map(projected).to(Device::cpu()).to_vector();
    out.prototype.insert(out.prototype.end(), pv.begin(), pv.end());
    const uint8_t* cm = sb.class_maps.data<uint8_t>();
    for (int64_t b = 0; b < n; ++b) {
      const std::vector<int> d = downsample_mode(cm + b * int64_t(size) * size, size, size,
                                                 int(out.w), int(out.h), data::kSceneClasses);
      out.cls.insert(out.cls.end(), d.begin(), d.end());
    }
  }
  return out;
}

}  // namespace

int cmd_probe(const Args& args) {
  std::string in, config_file, device = "auto";
  bool init = false;
  int64_t fit = 256, count = -1, size = -1;
  double l2 = 1e-2;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string { return option_value(args, &i); };
    if (a == "--help" || a == "-h") {
      probe_usage(stdout);
      return 0;
    } else if (a == "--init") {
      init = true;
    } else if (a == "--fit") {
      fit = parse_count(a, value());
    } else if (a == "--l2") {
      l2 = parse_number(a, value());
    } else if (a == "--count") {
      count = parse_count(a, value());
    } else if (a == "--size") {
      size = parse_count(a, value());
    } else if (a == "--config") {
      config_file = value();
    } else if (a == "--device") {
      device = value();
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "slotcon probe: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    } else {
      SC_CHECK(in.empty(), "one checkpoint only (got '", in, "' and '", a, "')");
      in = a;
    }
  }
  if (in.empty() == !init) {
    std::fprintf(stderr, "usage: slotcon probe CHECKPOINT | --init --config FILE (see --help)\n");
    return 2;
  }
  SC_CHECK(!init || !config_file.empty(), "slotcon probe --init needs the run's --config FILE");
  const Device dev = choose_device(device, "--device");

  RunModel run;
  if (init) {
    run.cfg = load_config_file(config_file);
    run.model = std::make_unique<SlotConModel>(run.cfg, dev, run.cfg.seed);
  } else {
    run = load_run_model(in, config_file, dev);
  }
  const TrainConfig& cfg = run.cfg;
  if (count < 0) count = cfg.score_images > 0 ? cfg.score_images : 64;
  if (size < 0) size = cfg.score_size > 0 ? cfg.score_size : cfg.image_size;
  SC_CHECK(fit >= 1 && fit <= cfg.synthetic_images,
           "--fit must be in [1, synthetic_images = ", cfg.synthetic_images,
           "] (the held-out scenes start after the training set), got ", fit);
  SC_CHECK(count >= 1 && count <= 4096, "--count must be in [1, 4096], got ", count);
  SC_CHECK(size >= 32 && size <= 1024, "--size must be in [32, 1024], got ", size);
  const data::SceneObjects objects = data::parse_scene_objects(cfg.synthetic_objects);

  const Cells train = teacher_cells(*run.model, cfg, objects, 0, fit, int(size), dev);
  const Cells held =
      teacher_cells(*run.model, cfg, objects, cfg.synthetic_images, count, int(size), dev);
  const int C = data::kSceneClasses, K = int(cfg.num_prototypes);
  const GroupingScore by_prototype = grouping_score(held.prototype, held.cls, K, C);
  const GroupingScore by_majority = grouping_score(
      map_prototypes(majority_class_map(train.prototype, train.cls, K, C), held.prototype),
      held.cls, C, C);
  const GroupingScore by_projected = grouping_score(
      nearest_class_mean(fit_class_means(train.projected, train.dim_projected, train.cls, C),
                         held.projected),
      held.cls, C, C);
  const GroupingScore by_backbone = grouping_score(
      nearest_class_mean(fit_class_means(train.backbone, train.dim_backbone, train.cls, C),
                         held.backbone),
      held.cls, C, C);

  // Supervised and linear: a class-balanced logistic regression per map, fit on the fit
  // scenes' cells with their classes (on the projected map, a bound on what any prototypes can
  // score there; model/grouping_score.h)
  const LinearProbe lp_projected =
      fit_linear_probe(train.projected, train.dim_projected, train.cls, C, l2);
  const LinearProbe lp_backbone =
      fit_linear_probe(train.backbone, train.dim_backbone, train.cls, C, l2);
  const GroupingScore by_linear_projected =
      grouping_score(linear_probe_predict(lp_projected, held.projected), held.cls, C, C);
  const GroupingScore by_linear_backbone =
      grouping_score(linear_probe_predict(lp_backbone, held.backbone), held.cls, C, C);
  const double fit_linear_projected =
      grouping_score(linear_probe_predict(lp_projected, train.projected), train.cls, C, C).miou;
  const double fit_linear_backbone =
      grouping_score(linear_probe_predict(lp_backbone, train.backbone), train.cls, C, C).miou;

  // Unsupervised: K groups (K = the run's prototypes) by spherical k-means on the fit scenes'
  // cells, then each held-out cell to its nearest centroid; also with each scene's mean cell
  // removed, so that what all cells of a scene share (its background, its tone) cannot decide.
  const int64_t cells_per_scene = held.h * held.w;
  auto kmeans_score = [&](const std::vector<double>& fit_rows, const std::vector<double>& rows,
                          int64_t dim) {
    return grouping_score(nearest_class_mean(fit_cosine_kmeans(fit_rows, dim, K, cfg.seed), rows),
                          held.cls, K, C);
  };
  auto centred = [&](const std::vector<double>& rows, int64_t dim) {
    return remove_group_means(rows, dim, cells_per_scene);
  };
  const int64_t Dp = held.dim_projected, Db = held.dim_backbone;
  const GroupingScore km_projected = kmeans_score(train.projected, held.projected, Dp);
  const GroupingScore km_projected_centred =
      kmeans_score(centred(train.projected, Dp), centred(held.projected, Dp), Dp);
  const GroupingScore km_backbone = kmeans_score(train.backbone, held.backbone, Db);
  const GroupingScore km_backbone_centred =
      kmeans_score(centred(train.backbone, Db), centred(held.backbone, Db), Db);

  std::printf(
      "probe of %s (%s teacher), synthetic scenes of seed %llu (%s objects) at %lld px, "
      "%lldx%lld cells\n",
      init ? "the initial state" : in.c_str(), cfg.arch.c_str(), (unsigned long long)cfg.seed,
      cfg.synthetic_objects.c_str(), (long long)size, (long long)held.h, (long long)held.w);
  std::printf(
      "class means fit on scenes 0..%lld (%zu cells); scored on held-out scenes "
      "%lld..%lld (%zu cells)\n",
      (long long)(fit - 1), train.cls.size(), (long long)cfg.synthetic_images,
      (long long)(cfg.synthetic_images + count - 1), held.cls.size());
  std::printf("  %-42s %7s %15s\n", "readout", "mIoU", "pixel accuracy");
  auto row = [](const std::string& name, const GroupingScore& g) {
    std::printf("  %-42s %7.4f %15.3f\n", name.c_str(), g.miou, g.pixel_accuracy);
  };
  row("prototypes, arg-max (the grouping score)", by_prototype);
  row("prototypes, each to its majority class", by_majority);
  row("projector, nearest class mean (" + std::to_string(held.dim_projected) + ")", by_projected);
  row("backbone, nearest class mean (" + std::to_string(held.dim_backbone) + ")", by_backbone);
  row("projector, linear probe (" + std::to_string(held.dim_projected) + ")", by_linear_projected);
  row("backbone, linear probe (" + std::to_string(held.dim_backbone) + ")", by_linear_backbone);
  const std::string k = std::to_string(K);
  row("projector, k-means (" + k + " groups)", km_projected);
  row("projector, k-means, scene mean removed", km_projected_centred);
  row("backbone, k-means (" + k + " groups)", km_backbone);
  row("backbone, k-means, scene mean removed", km_backbone_centred);
  std::printf(
      "linear probes on their own fit scenes: projector mIoU %.4f (loss %.4f, %d iterations), "
      "backbone %.4f (loss %.4f, %d iterations)\n",
      fit_linear_projected, lp_projected.loss, lp_projected.iterations, fit_linear_backbone,
      lp_backbone.loss, lp_backbone.iterations);
  const CellSpread spread =
      cell_spread(held.projected, held.dim_projected,
                  run.model->grouping_k->slot_embed->weight.to(Device::cpu()).to_vector());
  const auto [lo, hi] = std::minmax_element(spread.cos_to.begin(), spread.cos_to.end());
  std::printf(
      "projected cells: mean resultant length %.3f (1: all one direction); cosine of their mean\n"
      "direction with the %d prototypes %.3f .. %.3f (a length near 1 with a narrow range is\n"
      "the group loss's uniform collapse: every cell scores about alike against every prototype)\n",
      spread.resultant_length, K, *lo, *hi);
  return 0;
}

}  // namespace app
}  // namespace sc
