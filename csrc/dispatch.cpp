// Picks the fastest kernel build that this CPU can run. The choice is made once, on
// first use (thread-safe), from FASTMLP_ISA=generic|avx2|avx512|auto or the CPU; tests
// may switch builds with select_kernels. The active table is an atomic pointer: a call
// reads it once at its start and keeps that table to its end, so switching never races
// with a kernel that is running.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace fastmlp {
namespace {

struct Candidate {
  const KernelTable* table;
  bool (*supported)();
};

bool always() { return true; }
#if defined(FASTMLP_HAVE_AVX2)
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#endif
#if defined(FASTMLP_HAVE_AVX512)
bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

// Best first.
const Candidate kCandidates[] = {
#if defined(FASTMLP_HAVE_AVX512)
    {&kernels_avx512, has_avx512},
#endif
#if defined(FASTMLP_HAVE_AVX2)
    {&kernels_avx2, has_avx2},
#endif
    {&kernels_generic, always},
};

const KernelTable* pick(const char* name) {
  for (const Candidate& c : kCandidates)
    if (c.supported() && (name == nullptr || std::strcmp(name, "auto") == 0 || std::strcmp(name, c.table->isa) == 0))
      return c.table;
  return nullptr;
}

std::atomic<const KernelTable*>& active() {
  // an unknown FASTMLP_ISA falls back to auto (fastmlp/__init__.py warns about it)
  static std::atomic<const KernelTable*> table{[] {
    const KernelTable* t = pick(std::getenv("FASTMLP_ISA"));
    return t ? t : pick(nullptr);
  }()};
  return table;
}

}  // namespace

const KernelTable& active_kernels() { return *active().load(std::memory_order_acquire); }

bool select_kernels(const char* name) {
  const KernelTable* t = pick(name);
  if (!t) return false;
  active().store(t, std::memory_order_release);
  return true;
}

int available_kernels(const char** names, int max_names) {
  int n = 0;
  for (const Candidate& c : kCandidates)
    if (c.supported() && n < max_names) names[n++] = c.table->isa;
  return n;
}

}  // namespace fastmlp
