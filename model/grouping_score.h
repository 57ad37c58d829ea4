// grouping_score.h: how well the prototypes group pixels by semantic class.
//
// Every pixel carries a predicted prototype (0..K-1) and a true class (0..C-1). Prototypes are
// matched one-to-one to classes so as to maximise the pixels they share (Hungarian matching, as
// unsupervised segmentation is usually scored); pixels of an unmatched prototype count as wrong.
// The score is the mean IoU over the classes that occur in the ground truth. One-to-one matters:
// with many-to-one (majority) matching, a coarse map whose every cell is mostly background maps
// every prototype to the background and the score cannot tell groupings apart. A model that puts
// every pixel in one prototype scores at most 1/C; a perfect grouping with K >= C scores 1.
#pragma once
#include <cstdint>
#include <vector>

namespace sc {

struct GroupingScore {
  double miou = 0;
  double pixel_accuracy = 0;
  int prototypes_used = 0;  // distinct prototypes assigned to at least one pixel
};

GroupingScore grouping_score(const std::vector<int64_t>& prototype, const std::vector<int>& cls,
                             int num_prototypes, int num_classes);

// Maximum-weight one-to-one assignment: rows (size R) to columns (size C) of a dense R x C weight
// matrix; returns, for each row, its column or -1. O(n^3) with n = max(R, C).
std::vector<int> max_weight_matching(const std::vector<double>& w, int R, int C);

// A nearest-class-mean probe of per-cell features (what a representation tells apart without
// any trained head): fit_class_means averages the L2-normalised rows of each class over N cells
// (feats: N x dim, row-major; cls: N labels in 0..num_classes-1); nearest_class_mean gives each
// row the class whose mean has the largest cosine with it (ties to the smaller id). A class
// with no fit cell is never predicted.
struct ClassMeans {
  int64_t dim = 0;
  int num_classes = 0;
  std::vector<double> mean;    // num_classes x dim, L2-normalised
  std::vector<int64_t> count;  // fit cells per class
};
ClassMeans fit_class_means(const std::vector<double>& feats, int64_t dim,
                           const std::vector<int>& cls, int num_classes);
std::vector<int64_t> nearest_class_mean(const ClassMeans& means, const std::vector<double>& feats);

// An unsupervised readout (what any grouping learnt without labels could find in the features):
// fit_cosine_kmeans groups the L2-normalised rows of feats (N x dim) into k clusters by spherical
// k-means (k-means++ seeding from `seed`, then Lloyd steps that give each row the centroid of
// largest cosine, ties to the smaller id, until no row moves or max_iters; an emptied cluster is
// re-seeded with the row farthest from its centroid), keeps the best of `restarts` by the summed
// cosine, and returns the centroids as ClassMeans (count = rows per cluster), so that
// nearest_class_mean assigns new rows to them. Deterministic for a seed on every platform.
ClassMeans fit_cosine_kmeans(const std::vector<double>& feats, int64_t dim, int k, uint64_t seed,
                             int restarts = 4, int max_iters = 100);

// A supervised linear readout (the standard linear probe of dense features: the most a linear
// head on these features tells apart): multinomial logistic regression on the L2-normalised
// rows of feats (N x dim), each feature standardised over the fit rows, with a bias per class,
// class-balanced (every class present in the fit rows weighs the same in the loss, as every
// class weighs the same in a mean IoU) and an L2 penalty `l2` on the weights. Fit by Nesterov's
// accelerated gradient with step 1/L (L bounds the loss's curvature, from a power iteration),
// its momentum restarted whenever the gradient opposes the last step, until the gradient's
// squared norm is below 1e-20 or max_iters. The prototypes' arg-max is itself a linear
// classifier of the normalised projected rows (unit weights, no bias), so on the projected map
// this probe bounds what any set of prototypes could score, up to how well the penalised
// cross-entropy stands in for the mean IoU. A class with no fit row is never predicted.
// Deterministic for one BLAS library and thread count (its products run through engine/ops.h).
struct LinearProbe {
  int64_t dim = 0;
  int num_classes = 0;
  std::vector<double> shift, scale;  // standardisation of the unit rows: (x - shift) * scale
  std::vector<double> weight;        // dim x num_classes, on the standardised rows
  std::vector<double> bias;          // num_classes
  std::vector<int64_t> count;        // fit rows per class
  double loss = 0;                   // the balanced cross-entropy (+ penalty) at the end
  int iterations = 0;
};
LinearProbe fit_linear_probe(const std::vector<double>& feats, int64_t dim,
                             const std::vector<int>& cls, int num_classes, double l2 = 1e-4,
                             int max_iters = 1000);
std::vector<int64_t> linear_probe_predict(const LinearProbe& probe,
                                          const std::vector<double>& feats);

// Subtracts from every row the mean of its group of rows_per_group consecutive rows (e.g. each
// scene's mean cell, so that what is shared by all cells of a scene no longer counts).
std::vector<double> remove_group_means(const std::vector<double>& feats, int64_t dim,
                                       int64_t rows_per_group);

// How the cells spread on the unit sphere: the mean of the L2-normalised rows of feats (N x dim)
// has length `resultant_length` (1 when every row points the same way, near 0 when they spread
// evenly) and direction `direction` (unit; zero when the length is 0). `cos_to` holds the cosine
// of that direction with each of the K rows of `prototypes` (K x dim). When the cells crowd
// round a direction at the same angle to every prototype, every cell scores about alike against
// all of them: the uniform collapse of the group loss (docs/training.md).
struct CellSpread {
  double resultant_length = 0;
  std::vector<double> direction;
  std::vector<double> cos_to;
};
CellSpread cell_spread(const std::vector<double>& feats, int64_t dim,
                       const std::vector<double>& prototypes);

// A many-to-one readout of the prototypes (how class-pure each prototype is, whatever how many
// share a class, which the one-to-one score counts as wrong): majority_class_map gives each of
// the K prototypes the class it shares most cells with on a fit set (ties to the smaller class;
// a prototype with no fit cell gets class 0, the background); map_prototypes turns per-cell
// prototypes into per-cell classes through it.
std::vector<int> majority_class_map(const std::vector<int64_t>& prototype,
                                    const std::vector<int>& cls, int num_prototypes,
                                    int num_classes);
std::vector<int64_t> map_prototypes(const std::vector<int>& map,
                                    const std::vector<int64_t>& prototype);

// The mode of `cls` (W x H, row-major) over each cell of an h x w grid: the class map at feature
// resolution. Ties go to the smaller class id.
std::vector<int> downsample_mode(const uint8_t* cls, int W, int H, int w, int h, int num_classes);

}  // namespace sc
