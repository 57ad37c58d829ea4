// curves.h: output_dir/curves.png, the training curves slotcon train draws at every checkpoint and
// at the end, from the run's own logs:
//   top:    the loss and its parts (total, group, contrast) against the step, metrics.jsonl;
//   bottom: the grouping score (mIoU of the teacher's slots on held-out synthetic scenes, and the
//           share of prototypes in use) against the step, grouping.jsonl (when present).
// Axes are labelled with a built-in 5x7 pixel font (no font files).
#pragma once
#include <string>
#include <vector>

namespace sc {

struct CurvePoint {
  double step = 0;
  double value = 0;
};
struct Curve {
  std::string label;
  std::vector<CurvePoint> points;
  unsigned rgb = 0x000000;
};
struct CurvePanel {
  std::string title;
  std::vector<Curve> curves;
  bool fixed_unit_range = false;  // y from 0 to 1 (scores), else the data's range
};

// RGB pixels (width x height x 3) of the panels stacked vertically, each with axes, ticks and a
// legend. Points with a non-finite value are skipped.
std::vector<unsigned char> render_curves(const std::vector<CurvePanel>& panels, int width,
                                         int panel_height);

// Reads output_dir/metrics.jsonl and output_dir/grouping.jsonl (a malformed line is skipped) and
// writes output_dir/curves.png; returns the path, or "" when there is nothing to draw yet.
// Throws sc::Error when the file cannot be written.
std::string write_training_curves(const std::string& output_dir);

}  // namespace sc
