#include "kernels/check.h"

namespace sc {
namespace kernels {

void fail(const std::string& what, const std::string& detail) {
  throw Error(what + ": " + detail);
}

}  // namespace kernels
}  // namespace sc
