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

// The team's barrier: spin briefly, then sleep (a futex on Linux, a yield elsewhere).
// OpenMP's own barrier spins for up to a millisecond or more; on shared cores a thread
// spinning there takes the core from the very thread it waits for (a busy neighbour
// made a 2-thread lecture step 6x slower than one thread). Here a waiter gives the core
// up after ~kSpinIterations pauses, so a descheduled team mate runs sooner.
// Plain ints with GCC's __atomic builtins: std::atomic is a template (see kernels.cpp).
struct Barrier {
  alignas(64) int arrived;     // threads at the barrier in this generation
  alignas(64) int generation;  // bumped by the last thread in; waiters watch it
  int sleepers;                // waiters in futex_wait
  double* profile;             // Exec::profile: column 0 gets each thread's seconds waiting here
};

inline double now_seconds() {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

constexpr int kSpinIterations = 1000;  // ~20-50 us of PAUSE, far above a balanced step's imbalance

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

inline void futex_wait(int* addr, int expected) {
#if defined(__linux__)
  syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
#else
  (void)addr;
  (void)expected;
  sched_yield();
#endif
}

inline void futex_wake_all(int* addr) {
#if defined(__linux__)
  syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#else
  (void)addr;
#endif
}

inline void barrier_wait(Barrier& b, int n) {
  const int gen = __atomic_load_n(&b.generation, __ATOMIC_ACQUIRE);
  if (__atomic_add_fetch(&b.arrived, 1, __ATOMIC_ACQ_REL) == n) {  // the last one in opens it
    __atomic_store_n(&b.arrived, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b.generation, gen + 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&b.sleepers, __ATOMIC_SEQ_CST)) futex_wake_all(&b.generation);
    return;
  }
  for (int i = 0; i < kSpinIterations; ++i) {
    if (__atomic_load_n(&b.generation, __ATOMIC_ACQUIRE) != gen) return;
    cpu_relax();
  }
  __atomic_add_fetch(&b.sleepers, 1, __ATOMIC_SEQ_CST);
  while (__atomic_load_n(&b.generation, __ATOMIC_SEQ_CST) == gen) futex_wait(&b.generation, gen);
  __atomic_sub_fetch(&b.sleepers, 1, __ATOMIC_SEQ_CST);
}

// Threads pay off only above this many multiply-adds per product: below it the
// fork/join costs more than the arithmetic.
constexpr int64_t kParallelMacs = 1 << 20;

// Marks that an index read during the call was out of range: its array was changed
// by another thread after the bindings checked it. The kernel skips that element and
// the bindings raise an IndexError.
inline void flag_bad_index(Exec& ex) { __atomic_store_n(&ex.bad_index, 1, __ATOMIC_RELAXED); }

inline void team_barrier(Barrier& b) {
  const int n = team_size();
  if (n == 1) return;
  if (b.profile) {  // measuring how long threads wait for each other
    const double t0 = now_seconds();
    barrier_wait(b, n);
    b.profile[2 * team_rank()] += now_seconds() - t0;
  } else {
    barrier_wait(b, n);
  }
}
