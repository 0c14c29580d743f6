// The backward pass of a per-channel PReLU for XLA:CPU as an XLA FFI handler (affjax/models/cpu_kernels.py calls
// it): the input gradient and the slopes' gradient in one multi-threaded pass over the input and the cotangent.
// XLA:CPU runs the input gradient and the slope gradient's products as single-threaded loops and reduces the
// products after writing them out (experiments/train_step_profile/README.md).
//
// x, g [M, C] float32 (x the PReLU's input, g the cotangent of its output), slope [C]; dx [M, C] = g where x >= 0,
// else slope * g; dslope [C] = the sum over rows of x * g where x < 0. Rows accumulate in float32 over blocks of
// kBlock rows, then in float64 per chunk; chunks are added in order, so the result does not depend on scheduling.

#include <algorithm>
#include <cstdint>

#include "parallel_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 64;

__attribute__((target_clones("avx512f", "avx2", "default")))
void PreluGradRows(const float* __restrict x, const float* __restrict g, const float* __restrict slope, int64_t c,
                   float* __restrict dx, float* __restrict block, double* __restrict total, int64_t begin,
                   int64_t end) {
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t stop = std::min(end, start + kBlock);
    std::fill(block, block + c, 0.0f);
    for (int64_t row = start; row < stop; ++row) {
      const float* __restrict xr = x + row * c;
      const float* __restrict gr = g + row * c;
      float* __restrict out = dx + row * c;
      for (int64_t ch = 0; ch < c; ++ch) {
        const bool negative = xr[ch] < 0.0f;
        out[ch] = negative ? slope[ch] * gr[ch] : gr[ch];
        block[ch] += negative ? xr[ch] * gr[ch] : 0.0f;
      }
    }
    for (int64_t ch = 0; ch < c; ++ch) total[ch] += block[ch];
  }
}

ffi::Error PreluGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                     ffi::Buffer<ffi::F32> slope, ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dslope) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || g.dimensions().size() != 2 || !std::equal(xd.begin(), xd.end(), g.dimensions().begin()) ||
      slope.dimensions().size() != 1 || slope.dimensions()[0] != xd[1] || dslope->dimensions()[0] != xd[1]) {
    return ffi::Error::InvalidArgument("prelu_grad: expected x and g [M, C], slope [C]");
  }
  const int64_t c = xd[1];
  const float *xp = x.typed_data(), *gp = g.typed_data(), *sp = slope.typed_data();
  float* dxp = dx->typed_data();
  affjax::ChunkedSums(pool, xd[0], c, dslope->typed_data(),
                      [&](float* block, double* total, int64_t begin, int64_t end) {
                        PreluGradRows(xp, gp, sp, c, dxp, block, total, begin, end);
                      });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AffjaxPreluGrad, PreluGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
