/* tvm_patch's hand-written int8 kernels for the Cortex-M7, chosen per layer in place of the
 * TVM-generated C where a layer matches (tvm_patch/kernels/variants.py decides). Every
 * kernel is exact int32 arithmetic with TFLite's requantization, bit-exact with the
 * TVM-generated kernels it replaces. The SIMD helpers below are the ARM DSP instructions on
 * the target and plain C elsewhere, so the same code also runs (and is tested) on a host. */
#ifndef TVMP_NN_H
#define TVMP_NN_H
#include <stdint.h>

#if defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
/* two int8 lanes (bytes 0 and 2) sign-extended to int16 halves, plus the halves of a */
static inline uint32_t tvmp_sxtab16(uint32_t a, uint32_t b) {
  return (uint32_t)__sxtab16((int16x2_t)a, (int8x4_t)b);
}
static inline uint32_t tvmp_sxtb16(uint32_t b) { return (uint32_t)__sxtb16((int8x4_t)b); }
/* acc + a.lo * b.lo + a.hi * b.hi over int16 halves */
static inline int32_t tvmp_smlad(uint32_t a, uint32_t b, int32_t acc) {
  return __smlad((int16x2_t)a, (int16x2_t)b, acc);
}
/* the same of bytes 1 and 3 (the rotation folded into the instruction) */
static inline uint32_t tvmp_sxtab16_ror8(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
static inline uint32_t tvmp_sxtb16_ror8(uint32_t b) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(b));
  return r;
}
/* [a.lo b.lo] and [a.hi b.hi]: int16 halves of two registers packed into one */
static inline uint32_t tvmp_pkhbt16(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
static inline uint32_t tvmp_pkhtb16(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
/* (a * b + 2^31) >> 32 */
static inline int32_t tvmp_smmulr(int32_t a, int32_t b) {
  int32_t r;
  __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
/* [a.lo b.hi] */
static inline uint32_t tvmp_lo_hi(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhbt %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
/* acc + a.hi * b.lo */
static inline int32_t tvmp_smlatb(uint32_t a, uint32_t b, int32_t acc) {
  return __smlatb((int32_t)a, (int32_t)b, acc);
}
/* acc + a.lo * b.lo, acc + a.hi * b.hi */
static inline int32_t tvmp_smlabb(uint32_t a, uint32_t b, int32_t acc) {
  return __smlabb((int32_t)a, (int32_t)b, acc);
}
static inline int32_t tvmp_smlatt(uint32_t a, uint32_t b, int32_t acc) {
  return __smlatt((int32_t)a, (int32_t)b, acc);
}
#else
static inline uint32_t tvmp_sxtab16(uint32_t a, uint32_t b) {
  uint16_t lo = (uint16_t)((int16_t)a + (int8_t)b);
  uint16_t hi = (uint16_t)((int16_t)(a >> 16) + (int8_t)(b >> 16));
  return (uint32_t)lo | ((uint32_t)hi << 16);
}
static inline uint32_t tvmp_sxtb16(uint32_t b) { return tvmp_sxtab16(0, b); }
static inline int32_t tvmp_smlad(uint32_t a, uint32_t b, int32_t acc) {
  return acc + (int16_t)a * (int16_t)b + (int16_t)(a >> 16) * (int16_t)(b >> 16);
}
static inline uint32_t tvmp_sxtab16_ror8(uint32_t a, uint32_t b) {
  return tvmp_sxtab16(a, (b >> 8) | (b << 24));
}
static inline uint32_t tvmp_sxtb16_ror8(uint32_t b) { return tvmp_sxtb16((b >> 8) | (b << 24)); }
static inline uint32_t tvmp_pkhbt16(uint32_t a, uint32_t b) {
  return (a & 0xffffu) | (b << 16);
}
static inline uint32_t tvmp_pkhtb16(uint32_t a, uint32_t b) {
  return (a & 0xffff0000u) | (b >> 16);
}
static inline int32_t tvmp_smlatb(uint32_t a, uint32_t b, int32_t acc) {
  return acc + (int16_t)(a >> 16) * (int16_t)b;
}
static inline int32_t tvmp_smlabb(uint32_t a, uint32_t b, int32_t acc) {
  return acc + (int16_t)a * (int16_t)b;
}
static inline int32_t tvmp_smlatt(uint32_t a, uint32_t b, int32_t acc) {
  return acc + (int16_t)(a >> 16) * (int16_t)(b >> 16);
}
static inline uint32_t tvmp_lo_hi(uint32_t a, uint32_t b) {
  return (a & 0xffffu) | (b & 0xffff0000u);
}
static inline int32_t tvmp_smmulr(int32_t a, int32_t b) {
  return (int32_t)(((int64_t)a * b + (1ll << 31)) >> 32);
}
#endif

static inline uint32_t tvmp_load32(const int8_t* p) {
  uint32_t v;
  __builtin_memcpy(&v, p, 4);  /* one LDR: the Cortex-M7 reads unaligned words */
  return v;
}

/* two offsets in int16 halves: the input zero point's negation, added by SXTAB16 */
static inline uint32_t tvmp_pair(int32_t offset) {
  return ((uint32_t)(uint16_t)offset << 16) | (uint16_t)offset;
}

/* MultiplyByQuantizedMultiplier(acc, mult, shift) as TFLite's reference kernels compute it,
 * split into what depends on the channel (tvmp_rq, once per channel) and what depends on
 * the accumulator (tvmp_rq_apply): a left shift that wraps in int32 (modulo 32),
 * SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT. TFLite's nudged division
 * truncates toward zero; for every int64 product p, trunc((p + nudge(p)) / 2^31) equals
 * (p + 2^30) >> 31 (arithmetic), one 64-bit add and shift. Only mult == INT32_MIN can
 * saturate, and kernels/variants.py keeps such layers on TVM's C.
 * The fast form, for layers whose every |acc| << (left + 1) fits in int32 and whose right
 * shift is at most 30 (kernels/variants.py proves it from the weights and biases): then
 * (p + 2^30) >> 31 is SMMULR(acc << (left + 1), mult), |h| <= 2^30, and TFLite's rounding
 * division is (h + 2^(right - 1) - (h < 0)) >> right for right >= 1 (h for right = 0),
 * with no overflow. */
typedef struct {
  int32_t fast, mult, left, right, mask, half, round, negative;
} tvmp_rq_t;

static inline tvmp_rq_t tvmp_rq(int32_t mult, int32_t shift, int32_t fast) {
  tvmp_rq_t q;
  q.fast = fast;
  q.mult = mult;
  q.left = shift > 0 ? (shift & 31) : 0;
  q.right = shift > 0 ? 0 : -shift;
  q.mask = (int32_t)((1u << q.right) - 1u);
  q.half = q.mask >> 1;
  q.round = q.right > 0 ? (int32_t)(1u << (q.right - 1)) : 0;
  q.negative = q.right > 0 ? -1 : 0;
  return q;
}

static inline int32_t tvmp_rq_apply(int32_t acc, tvmp_rq_t q) {
  int32_t x = (int32_t)((uint32_t)acc << q.left);
  int32_t h = (int32_t)(((int64_t)x * q.mult + (1ll << 30)) >> 31);
  int32_t threshold = q.half + (int32_t)((uint32_t)h >> 31);
  return (h >> q.right) + ((h & q.mask) > threshold);
}

static inline int32_t tvmp_rq_apply_fast(int32_t acc, tvmp_rq_t q) {
  int32_t h = tvmp_smmulr((int32_t)((uint32_t)acc << (q.left + 1)), q.mult);
  return (h + q.round + ((h >> 31) & q.negative)) >> q.right;
}

static inline int8_t tvmp_clamp_s8(int32_t v, int32_t lo, int32_t hi) {
  v = v < lo ? lo : v;
  return (int8_t)(v > hi ? hi : v);
}

/* acc requantized (the fast form when `fast`), offset and clamped to the int8 output;
 * kernels pass a constant `fast` where their loops are specialized for it */
static inline int8_t tvmp_requantize(int32_t acc, tvmp_rq_t q, int32_t fast,
                                     int32_t out_offset, int32_t lo, int32_t hi) {
  return tvmp_clamp_s8((fast ? tvmp_rq_apply_fast(acc, q) : tvmp_rq_apply(acc, q)) +
                       out_offset, lo, hi);
}

static inline int8_t tvmp_out_s8(int32_t acc, tvmp_rq_t q, int32_t out_offset, int32_t lo,
                                 int32_t hi) {
  return tvmp_requantize(acc, q, q.fast, out_offset, lo, hi);
}

/* the largest padded depthwise plane on the stack, bytes (tvmp_depthwise_s8) */
#ifndef TVMP_DW_PADDED_MAX
#define TVMP_DW_PADDED_MAX 1024
#endif

/* Every kernel takes `fast`: 1 when the layer qualifies for tvmp_rq_apply_fast, and the
 * row pitches of its input and output, x_row and y_row pixels: a whole tensor's width, or
 * the width of the buffer a rectangle of it lies in (a fused block's tile regions). */

/* 1x1 convolution, stride 1, over rows x cols pixels (NHWC, weights OHWI):
 * y[p][o] = clamp(requantize(bias[o] + sum_c (x[p][c] + in_offset) * w[o][c]) + out_offset) */
void tvmp_conv1x1_s8(const int8_t* x, const int8_t* w, const int32_t* bias,
                     const int32_t* mult, const int32_t* shift, int8_t* y, int32_t rows,
                     int32_t cols, int32_t cin, int32_t cout, int32_t x_row, int32_t y_row,
                     int32_t in_offset, int32_t out_offset, int32_t lo, int32_t hi,
                     int32_t fast);

/* convolution, dilation 1, any kernel and stride (NHWC, weights OHWI, input channels
 * matching), taps outside the image skipped. Two positions at a time: windows of at most
 * TVMP_COL_MAX taps are widened into int16 columns on the stack (4 * TVMP_COL_MAX bytes),
 * wider ones take each window row (kw * cin bytes) as one contiguous dot product. */
void tvmp_conv_s8(const int8_t* x, const int8_t* w, const int32_t* bias, const int32_t* mult,
                  const int32_t* shift, int8_t* y, int32_t h, int32_t wd, int32_t cin,
                  int32_t oh, int32_t ow, int32_t cout, int32_t kh, int32_t kw,
                  int32_t stride_h, int32_t stride_w, int32_t pad_top, int32_t pad_left,
                  int32_t x_row, int32_t y_row, int32_t in_offset, int32_t out_offset,
                  int32_t lo, int32_t hi, int32_t fast);

/* the same over a float image quantized to int8 (scale, zero_point: TFLite's QUANTIZE) as
 * its windows are gathered; windows of at most TVMP_COL_MAX taps only */
void tvmp_conv_f32_s8(const float* x, float scale, int32_t zero_point, const int8_t* w,
                      const int32_t* bias, const int32_t* mult, const int32_t* shift, int8_t* y,
                      int32_t h, int32_t wd, int32_t cin, int32_t oh, int32_t ow, int32_t cout,
                      int32_t kh, int32_t kw, int32_t stride_h, int32_t stride_w,
                      int32_t pad_top, int32_t pad_left, int32_t x_row, int32_t y_row,
                      int32_t out_offset, int32_t lo, int32_t hi, int32_t fast);

/* depthwise convolution, depth multiplier 1, dilation 1 (NHWC, weights 1 x kh x kw x c),
 * taps outside the image skipped (TFLite's padding). Each channel of x is copied before
 * that channel of y is written, so y may be x itself (in place), and windows read
 * contiguous rows: into a plane on the stack with the padding around it when that fits
 * TVMP_DW_PADDED_MAX bytes (no window is then cut), else into `plane` (h * w bytes). */
void tvmp_depthwise_s8(const int8_t* x, const int8_t* w, const int32_t* bias,
                       const int32_t* mult, const int32_t* shift, int8_t* y, int8_t* plane,
                       int32_t h, int32_t wd, int32_t c, int32_t oh, int32_t ow, int32_t kh,
                       int32_t kw, int32_t stride_h, int32_t stride_w, int32_t pad_top,
                       int32_t pad_left, int32_t x_row, int32_t y_row, int32_t in_offset,
                       int32_t out_offset, int32_t lo, int32_t hi, int32_t fast);

/* the same straight from the NHWC tensor, four channels per step (their bytes adjacent),
 * no copy and no per-channel setup: for rectangles of few outputs (a fused block's tiles),
 * where the planes' setup would cost more than the windows; y must not overlap x */
void tvmp_depthwise_nhwc_s8(const int8_t* x, const int8_t* w, const int32_t* bias,
                            const int32_t* mult, const int32_t* shift, int8_t* y, int32_t h,
                            int32_t wd, int32_t c, int32_t oh, int32_t ow, int32_t kh,
                            int32_t kw, int32_t stride_h, int32_t stride_w, int32_t pad_top,
                            int32_t pad_left, int32_t x_row, int32_t y_row, int32_t in_offset,
                            int32_t out_offset, int32_t lo, int32_t hi, int32_t fast);

#endif
