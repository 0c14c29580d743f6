// Row-chunk parallelism on XLA's intra-op thread pool for affjax's native XLA:CPU kernels.
#ifndef AFFJAX_MODELS_CSRC_PARALLEL_CHUNKS_H_
#define AFFJAX_MODELS_CSRC_PARALLEL_CHUNKS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace affjax {

// Splits [0, rows) into `chunks` contiguous ranges and runs body(chunk, begin, end) for each, on the calling
// thread and XLA's intra-op pool. The caller claims chunks too and only waits for chunks another thread has
// started, so a pool whose threads are all busy (or none) cannot deadlock it.
template <typename Body>
inline void ParallelChunks(xla::ffi::ThreadPool& pool, int64_t rows, int64_t chunks, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  auto run = [state, rows, chunks, &body]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < chunks;) {
      body(i, rows * i / chunks, rows * (i + 1) / chunks);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->finished.notify_all();
      }
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    // A helper that starts after all chunks are claimed returns at once; it never touches `body` then.
    pool.Schedule([state, chunks, run]() {
      if (state->next.load() < chunks) run();
    });
  }
  run();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done.load() == chunks; });
}

// A fixed number of chunks, independent of the thread count, so that per-chunk partial sums added in chunk order
// give the same result on every machine.
inline int64_t ChunkCount(int64_t rows) { return std::min<int64_t>(rows, 32); }

// Sums over rows in chunks: body(scratch, total, begin, end) adds rows [begin, end) to `total` (`size` float64,
// zeroed), with `scratch` (`size` float32) for its own partial sums; then out[t] = the chunks' totals added in
// chunk order. The chunks do not depend on the thread count, so neither does the result.
template <typename Body>
inline void ChunkedSums(xla::ffi::ThreadPool& pool, int64_t rows, int64_t size, float* out, const Body& body) {
  const int64_t chunks = ChunkCount(rows);
  std::vector<double> totals(chunks * size, 0.0);
  std::vector<float> scratch(chunks * size);
  ParallelChunks(pool, rows, chunks, [&](int64_t chunk, int64_t begin, int64_t end) {
    body(scratch.data() + chunk * size, totals.data() + chunk * size, begin, end);
  });
  for (int64_t t = 0; t < size; ++t) {
    double sum = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += totals[chunk * size + t];
    out[t] = static_cast<float>(sum);
  }
}

}  // namespace affjax

#endif  // AFFJAX_MODELS_CSRC_PARALLEL_CHUNKS_H_
