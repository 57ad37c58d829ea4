// cuda_emu_rewrite: turns a CUDA source of kernels/ into C++ for the CUDA emulator (cuda_emu.h).
//
//   cuda_emu_rewrite IN OUT
//
// Four mechanical rewrites; everything else is left as written (the emulator header gives the
// CUDA keywords and built-ins their host meaning):
//   K<<<cfg>>>(args)          ->  ::emu::launch(::emu::LaunchCfg(cfg), "K",
//                                   [emu_args = std::make_tuple(args)]() {
//                                     std::apply([](const auto&... a) { K(a...); }, emu_args); })
//                                 (the arguments evaluated once and held by value: a launch that a
//                                 stream capture records runs later, from cudaGraphLaunch)
//   extern __shared__ T n[];  ->  T* n = reinterpret_cast<T*>(::emu::dynamic_shared());
//   __shared__ T a[N], b;     ->  the same, then ::emu::poison_shared_once(&a, sizeof(a)); and
//                                 likewise for b (a declaration that starts a line)
//   cudaFuncSetAttribute(K,   ->  ::emu::func_set_attribute("K",
// where K is the kernel expression (a possibly qualified name with template arguments) and "K" its
// text without spaces. Line numbers are kept (#line and padding), so compiler messages point into
// the original file.
#include <cctype>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

bool ident(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

std::string squeeze(const std::string& s) {
  std::string o;
  for (char c : s)
    if (!std::isspace(static_cast<unsigned char>(c))) o += c;
  return o;
}

size_t count_nl(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// Start of the kernel expression that ends just before `end` (exclusive).
size_t kernel_expr_start(const std::string& s, size_t end) {
  size_t j = end;
  while (j > 0 && std::isspace(static_cast<unsigned char>(s[j - 1]))) --j;
  for (;;) {
    if (j > 0 && s[j - 1] == '>') {
      int depth = 0;
      size_t k = j;
      while (k > 0) {
        --k;
        if (s[k] == '>') ++depth;
        if (s[k] == '<' && --depth == 0) break;
      }
      if (depth != 0) throw std::runtime_error("unbalanced template arguments before <<<");
      j = k;
      continue;
    }
    if (j > 0 && ident(s[j - 1])) {
      while (j > 0 && ident(s[j - 1])) --j;
      if (j >= 2 && s[j - 1] == ':' && s[j - 2] == ':') {
        j -= 2;
        continue;
      }
      break;
    }
    break;
  }
  return j;
}

// Index just past the ')' matching the '(' at `open`.
size_t match_paren(const std::string& s, size_t open) {
  int depth = 0;
  for (size_t k = open; k < s.size(); ++k) {
    if (s[k] == '(') ++depth;
    if (s[k] == ')' && --depth == 0) return k + 1;
  }
  throw std::runtime_error("unbalanced parentheses in a kernel launch");
}

std::string rewrite_launches(const std::string& s) {
  std::string out;
  size_t pos = 0;
  for (;;) {
    const size_t lt = s.find("<<<", pos);
    if (lt == std::string::npos) break;
    const size_t k0 = kernel_expr_start(s, lt);
    if (k0 < pos) throw std::runtime_error("kernel launch without a kernel name");
    std::string kernel = s.substr(k0, lt - k0);
    size_t kend = kernel.find_last_not_of(" \t\r\n");
    const std::string kernel_ws = kernel.substr(kend + 1);
    kernel = kernel.substr(0, kend + 1);
    const size_t gt = s.find(">>>", lt + 3);
    if (gt == std::string::npos) throw std::runtime_error("<<< without >>>");
    const std::string cfg = s.substr(lt + 3, gt - lt - 3);
    size_t open = gt + 3;
    while (open < s.size() && std::isspace(static_cast<unsigned char>(s[open]))) ++open;
    if (open >= s.size() || s[open] != '(') throw std::runtime_error(">>> not followed by (");
    const size_t close = match_paren(s, open);
    const std::string between = s.substr(gt + 3, open - gt - 3);
    const std::string args = s.substr(open + 1, close - open - 2);
    // The arguments are evaluated once, at the launch, and held by value (a launch recorded by a
    // stream capture runs later, from cudaGraphLaunch); each thread calls the kernel with them.
    std::string repl = "::emu::launch(::emu::LaunchCfg(" + cfg + "), \"" + squeeze(kernel) +
                       "\", [emu_args = ::std::make_tuple(" + args +
                       ")]() { ::std::apply([](const auto&... emu_a) { " + kernel +
                       "(emu_a...); }, emu_args); })";
    const size_t lost = count_nl(kernel_ws) + count_nl(between);
    out += s.substr(pos, k0 - pos);
    out += repl;
    out += std::string(lost, '\n');
    pos = close;
  }
  out += s.substr(pos);
  return out;
}

std::string rewrite_extern_shared(const std::string& s) {
  std::string out;
  size_t pos = 0;
  const std::string key = "extern __shared__";
  for (;;) {
    const size_t at = s.find(key, pos);
    if (at == std::string::npos) break;
    const size_t semi = s.find(';', at);
    if (semi == std::string::npos) throw std::runtime_error("extern __shared__ without ;");
    std::string decl = s.substr(at + key.size(), semi - at - key.size());
    // drop __align__(n)
    const size_t al = decl.find("__align__(");
    if (al != std::string::npos) decl.erase(al, decl.find(')', al) + 1 - al);
    const size_t br = decl.find('[');
    if (br == std::string::npos) throw std::runtime_error("extern __shared__ without []");
    size_t ne = br;
    while (ne > 0 && std::isspace(static_cast<unsigned char>(decl[ne - 1]))) --ne;
    size_t nb = ne;
    while (nb > 0 && ident(decl[nb - 1])) --nb;
    const std::string name = decl.substr(nb, ne - nb);
    std::string type = decl.substr(0, nb);
    const size_t t0 = type.find_first_not_of(" \t\r\n"), t1 = type.find_last_not_of(" \t\r\n");
    type = type.substr(t0, t1 - t0 + 1);
    out += s.substr(pos, at - pos);
    out += type + "* " + name + " = reinterpret_cast<" + type + "*>(::emu::dynamic_shared());";
    out += std::string(count_nl(decl), '\n');
    pos = semi + 1;
  }
  out += s.substr(pos);
  return out;
}

// `__shared__ T a[N], b[M];` at the start of a line (not extern: rewrite_extern_shared ran first)
// stays as it is (a function-local static, cuda_emu.h) and is followed by
// `::emu::poison_shared_once(&a, sizeof(a)); ::emu::poison_shared_once(&b, sizeof(b));`, so that
// each block starts with the array full of 0xFF bytes, as dynamic shared memory does, instead of
// the previous block's values (or zeros for block 0).
std::string rewrite_static_shared(const std::string& s) {
  std::string out;
  size_t pos = 0;
  const std::string key = "__shared__";
  for (size_t at = s.find(key, pos); at != std::string::npos; at = s.find(key, at + 1)) {
    size_t ls = at;
    while (ls > 0 && (s[ls - 1] == ' ' || s[ls - 1] == '\t')) --ls;
    if (ls > 0 && s[ls - 1] != '\n') continue;  // not a declaration at the start of a line
    const size_t semi = s.find(';', at);
    if (semi == std::string::npos) throw std::runtime_error("__shared__ without ;");
    const std::string decl = s.substr(at + key.size(), semi - at - key.size());
    // the declarators: split at commas outside (), [], {} and template <>
    std::vector<std::string> parts;
    int round = 0, angle = 0;
    size_t b = 0;
    for (size_t k = 0; k < decl.size(); ++k) {
      const char c = decl[k];
      if (c == '(' || c == '[' || c == '{') ++round;
      if (c == ')' || c == ']' || c == '}') --round;
      if (round == 0 && c == '<') ++angle;
      if (round == 0 && c == '>') --angle;
      if (c == ',' && round == 0 && angle == 0) {
        parts.push_back(decl.substr(b, k - b));
        b = k + 1;
      }
    }
    parts.push_back(decl.substr(b));
    std::string poison;
    for (size_t i = 0; i < parts.size(); ++i) {
      const std::string& d = parts[i];
      size_t ne = d.find_first_of("[=");
      if (ne == std::string::npos) ne = d.size();
      while (ne > 0 && !ident(d[ne - 1])) --ne;  // trailing blanks
      size_t nb = ne;
      while (nb > 0 && ident(d[nb - 1])) --nb;
      const std::string name = d.substr(nb, ne - nb);
      if (name.empty()) throw std::runtime_error("__shared__ declaration without a name");
      poison += " ::emu::poison_shared_once(&" + name + ", sizeof(" + name + "));";
    }
    out += s.substr(pos, semi + 1 - pos);
    out += poison;
    pos = semi + 1;
  }
  out += s.substr(pos);
  return out;
}

std::string rewrite_func_attribute(const std::string& s) {
  std::string out;
  size_t pos = 0;
  const std::string key = "cudaFuncSetAttribute(";
  for (;;) {
    const size_t at = s.find(key, pos);
    if (at == std::string::npos) break;
    size_t k = at + key.size();
    int depth = 0;
    for (; k < s.size(); ++k) {
      const char c = s[k];
      if (c == '(' || c == '<') ++depth;
      if (c == ')' || c == '>') --depth;
      if (c == ',' && depth == 0) break;
    }
    if (k >= s.size()) throw std::runtime_error("cudaFuncSetAttribute without arguments");
    const std::string kernel = s.substr(at + key.size(), k - at - key.size());
    out += s.substr(pos, at - pos);
    out += "::emu::func_set_attribute(\"" + squeeze(kernel) + "\"";
    out += std::string(count_nl(kernel), '\n');
    pos = k;  // the ',' and the rest stay
  }
  out += s.substr(pos);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: cuda_emu_rewrite IN OUT\n");
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cuda_emu_rewrite: cannot read %s\n", argv[1]);
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text;
  try {
    text = rewrite_func_attribute(
        rewrite_static_shared(rewrite_extern_shared(rewrite_launches(ss.str()))));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_emu_rewrite: %s: %s\n", argv[1], e.what());
    return 1;
  }
  const std::string tmp = std::string(argv[2]) + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << "#line 1 \"" << argv[1] << "\"\n" << text;
    if (!out) {
      std::fprintf(stderr, "cuda_emu_rewrite: cannot write %s\n", tmp.c_str());
      return 1;
    }
  }
  if (std::rename(tmp.c_str(), argv[2]) != 0) {
    std::fprintf(stderr, "cuda_emu_rewrite: cannot rename %s\n", tmp.c_str());
    return 1;
  }
  return 0;
}
