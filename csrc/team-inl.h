// Threads and memory of one ISA build: workspace buffers, a thread's share of a range
// inside an OpenMP team, and the team's barrier.
//
// Rules every kernel follows:
// * Memory is allocated before a parallel region is entered, never inside one, so
//   an allocation failure throws std::bad_alloc (a MemoryError in Python) instead of
//   aborting: an exception must not leave an OpenMP region.
// * Inside a team, each output element has one owner thread and is computed in a fixed
//   order, so results do not depend on the number of threads.

// Growable, 64-byte aligned float buffer (malloc based: std:: containers would be
// templates shared by every ISA build of this file).
struct Buf {
  float* p = nullptr;
  size_t cap = 0;
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { free(p); }
  float* get(size_t n) {
    if (n > cap) {
      free(p);
      p = nullptr;
      cap = 0;
      const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      if (n > ((size_t)1 << 40) || !(p = (float*)aligned_alloc(64, bytes))) throw std::bad_alloc();
      cap = n;
    }
    return p;
  }
  template <typename T>
  T* get_as(size_t n) {  // int32/int64/double storage in the same buffer
    return (T*)get((n * sizeof(T) + sizeof(float) - 1) / sizeof(float));
  }
};

inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}
inline int team_rank() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// A contiguous share of [0, n) for this thread of the team (all of it outside a team).
inline void my_share(int64_t n, int64_t* begin, int64_t* end) {
  const int64_t nt = team_size(), id = team_rank();
  *begin = n * id / nt;
  *end = n * (id + 1) / nt;
}

inline void team_barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// Threads pay off only above this many multiply-adds per product: below it the
// fork/join costs more than the arithmetic.
constexpr int64_t kParallelMacs = 1 << 20;

// Marks that an index read during the call was out of range: its array was changed
// by another thread after the bindings checked it. The kernel skips that element and
// the bindings raise an IndexError.
inline void flag_bad_index(Exec& ex) { __atomic_store_n(&ex.bad_index, 1, __ATOMIC_RELAXED); }
