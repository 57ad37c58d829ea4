// grouping_score.h: how well the prototypes group pixels by semantic class.
//
// Every pixel carries a predicted prototype (0..K-1) and a true class (0..C-1). Each prototype is
// mapped to the class it overlaps most (many-to-one, the usual matching when K > C), and the
// score is the mean IoU over the classes that occur in the ground truth or the mapped prediction.
// A model that puts every pixel in one prototype scores about 1/C on balanced data; a perfect
// grouping scores 1.
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

// The mode of `cls` (W x H, row-major) over each cell of an h x w grid: the class map at feature
// resolution. Ties go to the smaller class id.
std::vector<int> downsample_mode(const uint8_t* cls, int W, int H, int w, int h, int num_classes);

}  // namespace sc
