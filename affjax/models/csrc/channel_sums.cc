// Per-channel sums for XLA:CPU as an XLA FFI handler (affjax/models/cpu_kernels.py calls it): the masked sums of
// `a` and of `a * (b - center)` over every position, in one multi-threaded pass. Train-mode BatchNorm needs them
// twice: its statistics (a = b = x, center 0: the sum and the sum of squares) and the gradients of its scale and
// shift (a = the cotangent, b = x, center = the batch mean). XLA:CPU computes each as products written out in
// full by single-threaded loops, then library reductions (experiments/train_step_profile/README.md).
//
// a, b [N, R, C] float32 (R = the positions of an image), center [C], mask [N] float32 (1 = in the sums, 0 =
// out); sums [2, C]: sum over n, r of mask[n] * a and of mask[n] * a * (b - center). Images out of the sums are
// not read.
// Rows accumulate in float32 over blocks of kBlock positions, then in float64 per chunk; chunks are added in
// order, so the result does not depend on scheduling.

#include <algorithm>
#include <cstdint>

#include "parallel_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 64;

__attribute__((target_clones("avx512f", "avx2", "default")))
void SumRows(const float* __restrict a, const float* __restrict b, const float* __restrict center,
             const float* __restrict mask, int64_t positions, int64_t c, float* __restrict block,
             double* __restrict total, int64_t begin, int64_t end) {
  for (int64_t start = begin; start < end;) {
    const int64_t image = start / positions;
    const int64_t stop = std::min({end, start + kBlock, (image + 1) * positions});
    if (mask[image] != 0.0f) {
      std::fill(block, block + 2 * c, 0.0f);
      for (int64_t row = start; row < stop; ++row) {
        const float* __restrict ar = a + row * c;
        const float* __restrict br = b + row * c;
        for (int64_t ch = 0; ch < c; ++ch) {
          block[ch] += ar[ch];
          block[c + ch] += ar[ch] * (br[ch] - center[ch]);
        }
      }
      for (int64_t t = 0; t < 2 * c; ++t) total[t] += block[t];
    }
    start = stop;
  }
}

ffi::Error ChannelSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                       ffi::Buffer<ffi::F32> center, ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<ffi::F32> sums) {
  auto xd = a.dimensions();
  auto bd = b.dimensions();
  auto sd = sums->dimensions();
  if (xd.size() != 3 || bd.size() != 3 || !std::equal(xd.begin(), xd.end(), bd.begin()) ||
      center.dimensions().size() != 1 || center.dimensions()[0] != xd[2] || mask.dimensions().size() != 1 ||
      mask.dimensions()[0] != xd[0] || sd.size() != 2 || sd[0] != 2 || sd[1] != xd[2]) {
    return ffi::Error::InvalidArgument("channel_sums: expected a and b [N, R, C], center [C], mask [N], sums [2, C]");
  }
  const int64_t positions = xd[1], c = xd[2];
  const float *ap = a.typed_data(), *bp = b.typed_data(), *cp = center.typed_data(), *mp = mask.typed_data();
  affjax::ChunkedSums(pool, xd[0] * positions, 2 * c, sums->typed_data(),
                      [&](float* block, double* total, int64_t begin, int64_t end) {
                        SumRows(ap, bp, cp, mp, positions, c, block, total, begin, end);
                      });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AffjaxChannelSums, ChannelSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
