// error.h: the engine's one exception type and its check macro.
#pragma once
#include <sstream>
#include <string>

#include "kernels/check.h"  // defines sc::Error

namespace sc {

namespace detail {
inline void format_to(std::ostringstream&) {}
template <class T, class... Rest>
void format_to(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  format_to(os, rest...);
}
}  // namespace detail

template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::format_to(os, args...);
  return os.str();
}

}  // namespace sc

// SC_CHECK(cond, parts...): throw sc::Error(parts...) unless cond holds.
#define SC_CHECK(cond, ...)                                  \
  do {                                                       \
    if (!(cond)) throw ::sc::Error(::sc::str_cat(__VA_ARGS__)); \
  } while (0)
