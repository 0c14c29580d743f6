// Train-mode BatchNorm statistics for XLA:CPU as an XLA FFI handler (affjax/models/layers.py calls it): the
// masked sum and sum of squares of every channel in one multi-threaded pass over the input. XLA:CPU computes
// them as `where(mask, x, 0)` and `where(mask, x * x, 0)` written out in full by single-threaded loops, then two
// library reductions (experiments/train_step_profile/README.md).
//
// x [N, R, C] float32 (R = the positions of an image), mask [N] float32 (1 = in the statistics, 0 = out);
// moments [2, C]: sum over n, r of mask[n] * x and of mask[n] * x^2. Images out of the statistics are not read.
// Rows accumulate in float32 over blocks of kBlock positions, then in float64 per chunk; chunks are added in
// order, so the result does not depend on scheduling.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 64;

__attribute__((target_clones("avx512f", "avx2", "default")))
void MomentRows(const float* __restrict x, const float* __restrict mask, int64_t positions, int64_t c,
                float* __restrict block, double* __restrict total, int64_t begin, int64_t end) {
  for (int64_t start = begin; start < end;) {
    const int64_t image = start / positions;
    const int64_t stop = std::min({end, start + kBlock, (image + 1) * positions});
    if (mask[image] != 0.0f) {
      std::fill(block, block + 2 * c, 0.0f);
      for (int64_t row = start; row < stop; ++row) {
        const float* __restrict in = x + row * c;
        for (int64_t ch = 0; ch < c; ++ch) {
          block[ch] += in[ch];
          block[c + ch] += in[ch] * in[ch];
        }
      }
      for (int64_t t = 0; t < 2 * c; ++t) total[t] += block[t];
    }
    start = stop;
  }
}

ffi::Error MaskedMoments(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mask,
                         ffi::ResultBuffer<ffi::F32> moments) {
  auto xd = x.dimensions();
  if (xd.size() != 3 || mask.dimensions().size() != 1 || mask.dimensions()[0] != xd[0] ||
      moments->dimensions().size() != 2 || moments->dimensions()[0] != 2 || moments->dimensions()[1] != xd[2]) {
    return ffi::Error::InvalidArgument("masked_moments: expected x [N, R, C], mask [N], moments [2, C]");
  }
  const int64_t positions = xd[1], c = xd[2], rows = xd[0] * xd[1];
  const int64_t chunks = affjax::ChunkCount(rows);
  std::vector<double> totals(chunks * 2 * c, 0.0);
  std::vector<float> blocks(chunks * 2 * c);
  const float *xp = x.typed_data(), *mp = mask.typed_data();
  affjax::ParallelChunks(pool, rows, chunks, [&](int64_t chunk, int64_t begin, int64_t end) {
    MomentRows(xp, mp, positions, c, blocks.data() + chunk * 2 * c, totals.data() + chunk * 2 * c, begin, end);
  });
  float* out = moments->typed_data();
  for (int64_t t = 0; t < 2 * c; ++t) {
    double sum = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += totals[chunk * 2 * c + t];
    out[t] = static_cast<float>(sum);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AffjaxMaskedMoments, MaskedMoments,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
