// Depthwise 2-D convolution (NHWC, one input channel per group) and its two gradients for XLA:CPU, as XLA FFI
// handlers (affjax/models/depthwise_cpu.py calls them).
//
// XLA:CPU has no one-pass form of the kernel gradient: its library reductions take materialised operands, so
// every tap first copies its strided input slice out (experiments/train_step_profile/README.md). Here each
// kernel reads the input and the cotangent once, row by row, with the taps' products accumulated in a row-sized
// buffer that stays in cache; the channel loops are contiguous and vectorised.
//
// Shapes: x [N, H, W, C], kernel [KH, KW, C], y and its cotangent g [N, HO, WO, C]; float32. The padding is
// (pad_top, pad_left) before the input; the output sizes say the rest. Work is split into a fixed number of row
// chunks, independent of the thread count, and the kernel gradient's chunk sums are added in chunk order, so
// results do not depend on scheduling.

#include <algorithm>
#include <cstdint>

#include "parallel_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using affjax::ChunkCount;
using affjax::ParallelChunks;

namespace {

struct Geometry {
  int64_t n, h, w, c, kh, kw, ho, wo, stride, top, left;
};

// The geometry from the input's, the kernel's and the output's shapes, which the three handlers take in
// different roles; an error naming the expected shapes if they do not fit together.
ffi::Error MakeGeometry(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> kd, ffi::Span<const int64_t> yd,
                        int64_t stride, int64_t top, int64_t left, Geometry* g) {
  if (xd.size() != 4 || kd.size() != 3 || yd.size() != 4 || kd[2] != xd[3] || yd[3] != xd[3] || yd[0] != xd[0]) {
    return ffi::Error::InvalidArgument(
        "depthwise_cpu: expected x [N, H, W, C], kernel [KH, KW, C] and y (or its cotangent) [N, HO, WO, C]");
  }
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], yd[1], yd[2], stride, top, left};
  return ffi::Error::Success();
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void ForwardRows(const Geometry& g, const float* __restrict x, const float* __restrict k, float* __restrict y,
                 int64_t begin, int64_t end) {
  const int64_t c = g.c;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / g.ho, oh = row % g.ho;
    for (int64_t ow = 0; ow < g.wo; ++ow) {
      float* __restrict out = y + (row * g.wo + ow) * c;
      std::fill(out, out + c, 0.0f);
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.stride + i - g.top;
        if (ih < 0 || ih >= g.h) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = ow * g.stride + j - g.left;
          if (iw < 0 || iw >= g.w) continue;
          const float* __restrict in = x + ((n * g.h + ih) * g.w + iw) * c;
          const float* __restrict tap = k + (i * g.kw + j) * c;
          for (int64_t ch = 0; ch < c; ++ch) out[ch] += in[ch] * tap[ch];
        }
      }
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void InputGradRows(const Geometry& g, const float* __restrict cot, const float* __restrict k,
                   float* __restrict dx, int64_t begin, int64_t end) {
  const int64_t c = g.c;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / g.h, ih = row % g.h;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      float* __restrict out = dx + (row * g.w + iw) * c;
      std::fill(out, out + c, 0.0f);
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t sh = ih + g.top - i;  // oh * stride
        if (sh < 0 || sh % g.stride != 0 || sh / g.stride >= g.ho) continue;
        const int64_t oh = sh / g.stride;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t sw = iw + g.left - j;
          if (sw < 0 || sw % g.stride != 0 || sw / g.stride >= g.wo) continue;
          const float* __restrict in = cot + ((n * g.ho + oh) * g.wo + sw / g.stride) * c;
          const float* __restrict tap = k + (i * g.kw + j) * c;
          for (int64_t ch = 0; ch < c; ++ch) out[ch] += in[ch] * tap[ch];
        }
      }
    }
  }
}

// Adds the kernel gradient of output rows [begin, end) to `total` (float64): each row's taps accumulate in
// float32 over its WO positions, then join the chunk's float64 sums.
__attribute__((target_clones("avx512f", "avx2", "default")))
void KernelGradRows(const Geometry& g, const float* __restrict x, const float* __restrict cot,
                    float* __restrict row_sum, double* __restrict total, int64_t begin, int64_t end) {
  const int64_t c = g.c, taps = g.kh * g.kw;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / g.ho, oh = row % g.ho;
    std::fill(row_sum, row_sum + taps * c, 0.0f);
    for (int64_t ow = 0; ow < g.wo; ++ow) {
      const float* __restrict gr = cot + (row * g.wo + ow) * c;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.stride + i - g.top;
        if (ih < 0 || ih >= g.h) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = ow * g.stride + j - g.left;
          if (iw < 0 || iw >= g.w) continue;
          const float* __restrict in = x + ((n * g.h + ih) * g.w + iw) * c;
          float* __restrict acc = row_sum + (i * g.kw + j) * c;
          for (int64_t ch = 0; ch < c; ++ch) acc[ch] += in[ch] * gr[ch];
        }
      }
    }
    for (int64_t t = 0; t < taps * c; ++t) total[t] += row_sum[t];
  }
}

using RowsFn = void (*)(const Geometry&, const float*, const float*, float*, int64_t, int64_t);

// The forward pass (rows of y from x) and the input gradient (rows of dx from the cotangent): `rows_fn` over the
// output's `rows` rows, in chunks.
void RowPass(ffi::ThreadPool& pool, const Geometry& g, int64_t rows, RowsFn rows_fn, const float* in,
             const float* kernel, float* out) {
  ParallelChunks(pool, rows, ChunkCount(rows),
                 [&](int64_t, int64_t begin, int64_t end) { rows_fn(g, in, kernel, out, begin, end); });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad_top, int64_t pad_left) {
  Geometry g;
  auto error = MakeGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(), stride, pad_top, pad_left, &g);
  if (error.success()) RowPass(pool, g, g.n * g.ho, ForwardRows, x.typed_data(), kernel.typed_data(), y->typed_data());
  return error;
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> cot, ffi::Buffer<ffi::F32> kernel,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t pad_top, int64_t pad_left) {
  Geometry g;
  auto error = MakeGeometry(dx->dimensions(), kernel.dimensions(), cot.dimensions(), stride, pad_top, pad_left, &g);
  if (error.success()) {
    RowPass(pool, g, g.n * g.h, InputGradRows, cot.typed_data(), kernel.typed_data(), dx->typed_data());
  }
  return error;
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> cot,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t stride, int64_t pad_top, int64_t pad_left) {
  Geometry g;
  auto error = MakeGeometry(x.dimensions(), dk->dimensions(), cot.dimensions(), stride, pad_top, pad_left, &g);
  if (error.failure()) return error;
  const float *xp = x.typed_data(), *gp = cot.typed_data();
  affjax::ChunkedSums(pool, g.n * g.ho, g.kh * g.kw * g.c, dk->typed_data(),
                      [&](float* row_sum, double* total, int64_t begin, int64_t end) {
                        KernelGradRows(g, xp, gp, row_sum, total, begin, end);
                      });
  return ffi::Error::Success();
}

// The three handlers take two float32 arrays, return one, and read the stride and the padding before the input.
auto DepthwiseBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AffjaxDepthwiseForward, Forward, DepthwiseBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AffjaxDepthwiseInputGrad, InputGrad, DepthwiseBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(AffjaxDepthwiseKernelGrad, KernelGrad, DepthwiseBinding());
