/* tvm_patch's hand-written int8 kernels (see tvmp_nn.h). */
#include <math.h>

#include "tvmp_nn.h"

/* sum_c x[c] * w[c] for two inputs and two weight rows at once (2x2 register block):
 * each 4-byte load is widened once and feeds four SMLADs. */
static inline void dot_2x2(const int8_t* x0, const int8_t* x1, const int8_t* w0,
                           const int8_t* w1, int32_t n, int32_t* acc) {
  int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
  const int8_t* end = x0 + (n & ~3);
  while (x0 != end) {
    uint32_t xa = tvmp_load32(x0), wa = tvmp_load32(w0);
    x0 += 4, w0 += 4;
    uint32_t xa_e = tvmp_sxtb16(xa), xa_o = tvmp_sxtb16_ror8(xa);
    uint32_t w_e = tvmp_sxtb16(wa), w_o = tvmp_sxtb16_ror8(wa);
    a00 = tvmp_smlad(xa_e, w_e, a00);
    a00 = tvmp_smlad(xa_o, w_o, a00);
    uint32_t xb = tvmp_load32(x1);
    x1 += 4;
    uint32_t xb_e = tvmp_sxtb16(xb), xb_o = tvmp_sxtb16_ror8(xb);
    a10 = tvmp_smlad(xb_e, w_e, a10);
    a10 = tvmp_smlad(xb_o, w_o, a10);
    uint32_t wb = tvmp_load32(w1);
    w1 += 4;
    w_e = tvmp_sxtb16(wb);
    w_o = tvmp_sxtb16_ror8(wb);
    a01 = tvmp_smlad(xa_e, w_e, a01);
    a01 = tvmp_smlad(xa_o, w_o, a01);
    a11 = tvmp_smlad(xb_e, w_e, a11);
    a11 = tvmp_smlad(xb_o, w_o, a11);
  }
  for (int32_t k = 0; k < (n & 3); ++k) {
    a00 += x0[k] * w0[k];
    a01 += x0[k] * w1[k];
    a10 += x1[k] * w0[k];
    a11 += x1[k] * w1[k];
  }
  acc[0] = a00, acc[1] = a01, acc[2] = a10, acc[3] = a11;
}

/* the same for one input and one weight row */
static inline int32_t dot_1x1(const int8_t* x, const int8_t* w, int32_t n, int32_t acc) {
  int32_t k = 0;
  for (; k + 4 <= n; k += 4) {
    uint32_t xv = tvmp_load32(x + k), wv = tvmp_load32(w + k);
    acc = tvmp_smlad(tvmp_sxtb16(xv), tvmp_sxtb16(wv), acc);
    acc = tvmp_smlad(tvmp_sxtb16_ror8(xv), tvmp_sxtb16_ror8(wv), acc);
  }
  for (; k < n; ++k) acc += x[k] * w[k];
  return acc;
}

/* bias + offset * sum_c w[c]: the input offset's share of a dot product, so the inner loops
 * multiply raw bytes (exact: int32 sums wrap the same in any order) */
/* sum_c w[c] over n bytes */
static inline int32_t weight_sum(const int8_t* w, int32_t n) {
  int32_t sum = 0;
  for (int32_t k = 0; k < n; ++k) sum += w[k];
  return sum;
}

static inline int32_t with_offset(int32_t bias, const int8_t* w, int32_t n, int32_t offset) {
  return (int32_t)((uint32_t)bias + (uint32_t)weight_sum(w, n) * (uint32_t)offset);
}

static void conv1x1_run(const int8_t* x, const int8_t* w, const int32_t* bias,
                        const int32_t* mult, const int32_t* shift, int8_t* y, int32_t positions,
                        int32_t cin, int32_t cout, int32_t in_offset, int32_t out_offset,
                        int32_t lo, int32_t hi, int32_t fast) {
  int32_t o = 0;
  for (; o + 2 <= cout; o += 2) {  /* two weight rows against every position */
    const int8_t* w0 = w + o * cin;
    const int32_t b0 = with_offset(bias[o], w0, cin, in_offset);
    const int32_t b1 = with_offset(bias[o + 1], w0 + cin, cin, in_offset);
    const tvmp_rq_t q0 = tvmp_rq(mult[o], shift[o], fast);
    const tvmp_rq_t q1 = tvmp_rq(mult[o + 1], shift[o + 1], fast);
    int32_t p = 0;
    for (; p + 2 <= positions; p += 2) {
      const int8_t* x0 = x + p * cin;
      int8_t* y0 = y + p * cout + o;
      int32_t acc[4] = {b0, b1, b0, b1};
      dot_2x2(x0, x0 + cin, w0, w0 + cin, cin, acc);
      y0[0] = tvmp_out_s8(acc[0], q0, out_offset, lo, hi);
      y0[1] = tvmp_out_s8(acc[1], q1, out_offset, lo, hi);
      y0[cout] = tvmp_out_s8(acc[2], q0, out_offset, lo, hi);
      y0[cout + 1] = tvmp_out_s8(acc[3], q1, out_offset, lo, hi);
    }
    if (p < positions) {
      const int8_t* x0 = x + p * cin;
      int8_t* y0 = y + p * cout + o;
      y0[0] = tvmp_out_s8(dot_1x1(x0, w0, cin, b0), q0, out_offset, lo, hi);
      y0[1] = tvmp_out_s8(dot_1x1(x0, w0 + cin, cin, b1), q1, out_offset, lo, hi);
    }
  }
  if (o < cout) {  /* an odd last weight row */
    const int8_t* w0 = w + o * cin;
    const int32_t b0 = with_offset(bias[o], w0, cin, in_offset);
    const tvmp_rq_t q0 = tvmp_rq(mult[o], shift[o], fast);
    for (int32_t p = 0; p < positions; ++p)
      y[p * cout + o] = tvmp_out_s8(dot_1x1(x + p * cin, w0, cin, b0), q0, out_offset, lo, hi);
  }
}

void tvmp_conv1x1_s8(const int8_t* x, const int8_t* w, const int32_t* bias,
                     const int32_t* mult, const int32_t* shift, int8_t* y, int32_t rows,
                     int32_t cols, int32_t cin, int32_t cout, int32_t x_row, int32_t y_row,
                     int32_t in_offset, int32_t out_offset, int32_t lo, int32_t hi,
                     int32_t fast) {
  if (x_row == cols && y_row == cols) {  /* one run over every position */
    conv1x1_run(x, w, bias, mult, shift, y, rows * cols, cin, cout, in_offset, out_offset, lo,
                hi, fast);
    return;
  }
  for (int32_t r = 0; r < rows; ++r)
    conv1x1_run(x + r * x_row * cin, w, bias, mult, shift, y + r * y_row * cout, cols, cin,
                cout, in_offset, out_offset, lo, hi, fast);
}

static inline void copy_bytes(int8_t* dst, const int8_t* src, int32_t n) {
  int32_t k = 0;
  for (; k + 4 <= n; k += 4) {
    uint32_t v = tvmp_load32(src + k);
    __builtin_memcpy(dst + k, &v, 4);
  }
  for (; k < n; ++k) dst[k] = src[k];
}

static inline void fill_bytes(int8_t* dst, int8_t value, int32_t n) {
  for (int32_t k = 0; k < n; ++k) dst[k] = value;
}

/* Depthwise convolution, one channel at a time from a copy of its plane. Every output whose
 * window is clipped by at most one side horizontally runs the same SIMD window as the
 * interior: a "column class" holds the channel's weights shifted left past the taps cut off
 * on the left (the window then starts at the image's first column), or with the taps past
 * the right edge zeroed; rows cut off at the top or bottom are skipped. The input offset's
 * share of each sum is folded into its start value, per class and row range. */

/* one past the last output whose window ends inside the image, given its last start
 * (image side - kernel side + padding before) and the stride: C division truncates toward
 * zero, so a window longer than the padded image is tested apart */
static inline int32_t uncut_end(int32_t last_start, int32_t stride) {
  return last_start < 0 ? 0 : last_start / stride + 1;
}

#define DW_MAX_K 7
#define DW_CLASSES (2 * DW_MAX_K - 1)  /* whole, cut on the left by 1..6, on the right by 1..6 */

typedef struct {
  uint32_t wp[DW_CLASSES][DW_MAX_K][4];  /* per class and row: taps as int16 pairs */
  int32_t sum[DW_CLASSES][DW_MAX_K];     /* per class and row: the sum of its taps */
  int8_t wk[DW_MAX_K * DW_MAX_K];        /* the channel's taps */
} depthwise_weights_t;

/* one output, the window clipped on any side (scalar; windows wider than the image) */
static int32_t depthwise_clipped(const int8_t* plane, const int8_t* wk, int32_t h, int32_t wd,
                                 int32_t iy, int32_t ix, int32_t kh, int32_t kw,
                                 int32_t in_offset, int32_t acc) {
  int32_t ky0 = iy < 0 ? -iy : 0, ky1 = h - iy < kh ? h - iy : kh;
  int32_t kx0 = ix < 0 ? -ix : 0, kx1 = wd - ix < kw ? wd - ix : kw;
  for (int32_t ky = ky0; ky < ky1; ++ky) {
    const int8_t* p = plane + (iy + ky) * wd + ix;
    const int8_t* k = wk + ky * kw;
    for (int32_t kx = kx0; kx < kx1; ++kx) acc += (p[kx] + in_offset) * k[kx];
  }
  return acc;
}

/* sum over `rows` window rows of the taps (wp, per row [w0 w1] [w2 w3] ...) times the kw
 * bytes at p: each row as int16 pairs (SXTB16, PKHBT) into SMLAD, an odd last tap by
 * SMLATB. It reads 4 bytes per row (8 for kw == 7). rows and kw are constants where it is
 * inlined, so the rows unroll. */
static inline __attribute__((always_inline)) int32_t depthwise_window(
    const int8_t* p, const uint32_t (*wp)[4], int32_t wd, int32_t rows, int32_t kw,
    int32_t acc) {
  for (int32_t ky = 0; ky < rows; ++ky, p += wd, ++wp) {
    uint32_t v = tvmp_load32(p);
    uint32_t e = tvmp_sxtb16(v), o = tvmp_sxtb16_ror8(v);      /* [x0 x2], [x1 x3] */
    acc = tvmp_smlad(tvmp_pkhbt16(e, o), (*wp)[0], acc);       /* x0 w0 + x1 w1 */
    if (kw == 3) {
      acc = tvmp_smlatb(e, (*wp)[1], acc);                     /* x2 w2 */
      continue;
    }
    acc = tvmp_smlad(tvmp_pkhtb16(o, e), (*wp)[1], acc);       /* x2 w2 + x3 w3 */
    if (kw == 5) {
      acc += p[4] * (int16_t)(*wp)[2];
      continue;
    }
    v = tvmp_load32(p + 4);                                    /* kw == 7 */
    e = tvmp_sxtb16(v), o = tvmp_sxtb16_ror8(v);
    acc = tvmp_smlad(tvmp_pkhbt16(e, o), (*wp)[2], acc);
    acc = tvmp_smlatb(e, (*wp)[3], acc);
  }
  return acc;
}

/* two neighbouring 3x3 windows at stride 1 (at p and p + 1): the 4 bytes of each row
 * serve both, [x0 x1] and [x1 x2] into SMLAD, x2 and x3 by SMLATB */
static inline __attribute__((always_inline)) void depthwise_window_3x3_pair(
    const int8_t* p, const uint32_t (*wp)[4], int32_t wd, int32_t start, int32_t* acc0,
    int32_t* acc1) {
  int32_t a0 = start, a1 = start;
  for (int32_t ky = 0; ky < 3; ++ky, p += wd, ++wp) {
    uint32_t v = tvmp_load32(p);
    uint32_t e = tvmp_sxtb16(v), o = tvmp_sxtb16_ror8(v);      /* [x0 x2], [x1 x3] */
    uint32_t w01 = (*wp)[0], w2 = (*wp)[1];
    a0 = tvmp_smlad(tvmp_pkhbt16(e, o), w01, a0);              /* x0 w0 + x1 w1 */
    a0 = tvmp_smlatb(e, w2, a0);                               /* x2 w2 */
    a1 = tvmp_smlad(tvmp_lo_hi(o, e), w01, a1);            /* x1 w0 + x2 w1 */
    a1 = tvmp_smlatb(o, w2, a1);                               /* x3 w2 */
  }
  *acc0 = a0, *acc1 = a1;
}

typedef struct {
  const int8_t* plane;
  int8_t* y;
  int32_t h, wd, c, oh, ow, y_row, kh, kw, stride_h, stride_w, pad_top, pad_left;
  int32_t x0, x1;           /* columns of outputs whose window is not cut horizontally */
  int32_t in_offset, out_offset, lo, hi;
} depthwise_t;

/* the class of a window cut to taps [kx0, kx1) */
static inline int32_t depthwise_class(int32_t kx0, int32_t kx1, int32_t kw) {
  return kx0 > 0 ? kx0 : kx1 < kw ? DW_MAX_K - 1 + kw - kx1 : 0;
}

static void depthwise_tables(depthwise_weights_t* t, const int8_t* w, int32_t c, int32_t kh,
                             int32_t kw, int32_t cut) {
  for (int32_t i = 0; i < kh * kw; ++i) t->wk[i] = w[i * c];
  for (int32_t k = 0; k <= cut; ++k) {
    for (int32_t side = 0; side < (k ? 2 : 1); ++side) {
      int32_t kx0 = side == 0 ? k : 0, kx1 = side == 0 ? kw : kw - k;
      int32_t cls = depthwise_class(kx0, kx1, kw);
      for (int32_t ky = 0; ky < kh; ++ky) {
        int32_t taps[8] = {0}, sum = 0;
        for (int32_t kx = kx0; kx < kx1; ++kx) sum += taps[kx - kx0] = t->wk[ky * kw + kx];
        for (int32_t j = 0; j < 4; ++j)
          t->wp[cls][ky][j] = (uint32_t)(uint16_t)taps[2 * j] |
                              ((uint32_t)(uint16_t)taps[2 * j + 1] << 16);
        t->sum[cls][ky] = sum;
      }
    }
  }
}

/* one channel; kh, kw constants where inlined */
static inline __attribute__((always_inline)) void depthwise_channel(
    const depthwise_t* d, int32_t ch, const depthwise_weights_t* t, int32_t bias,
    tvmp_rq_t q, int32_t kh, int32_t kw) {
  const int32_t h = d->h, wd = d->wd, c = d->c, ow = d->ow, sw = d->stride_w;
  const int32_t reach = kw == 7 ? 8 : 4;  /* bytes depthwise_window reads per row */
  for (int32_t oy = 0; oy < d->oh; ++oy) {
    const int32_t iy = oy * d->stride_h - d->pad_top;
    const int32_t ky0 = iy < 0 ? -iy : 0, ky1 = h - iy < kh ? h - iy : kh;
    const int32_t rows = ky1 - ky0;
    const int8_t* base = d->plane + (iy + ky0) * wd;
    const int32_t last = (rows - 1) * wd;  /* from base: the start of the last row read */
    int8_t* out = d->y + oy * d->y_row * c + ch;
    int32_t x1 = d->x1;  /* the interior, its last row's reads inside the plane */
    while (x1 > d->x0 && (iy + ky1 - 1) * wd + (x1 - 1) * sw - d->pad_left + reach > h * wd)
      --x1;
    for (int32_t ox = 0; ox < ow; ++ox) {
      const int32_t ix = ox * sw - d->pad_left;
      int32_t acc;
      if (ox >= d->x0 && ox < x1) {  /* a run of uncut windows */
        int32_t start = bias;
        for (int32_t ky = ky0; ky < ky1; ++ky) start += t->sum[0][ky] * d->in_offset;
        const int8_t* p = base + ix;
        if (kh == 3 && kw == 3 && rows == 3 && sw == 1) {
          for (; ox + 2 <= x1; ox += 2, p += 2) {
            int32_t a0, a1;
            depthwise_window_3x3_pair(p, t->wp[0], wd, start, &a0, &a1);
            out[ox * c] = tvmp_out_s8(a0, q, d->out_offset, d->lo, d->hi);
            out[(ox + 1) * c] = tvmp_out_s8(a1, q, d->out_offset, d->lo, d->hi);
          }
        }
        if (rows == kh) {
          for (; ox < x1; ++ox, p += sw)
            out[ox * c] = tvmp_out_s8(depthwise_window(p, t->wp[0], wd, kh, kw, start), q,
                                      d->out_offset, d->lo, d->hi);
        } else {
          for (; ox < x1; ++ox, p += sw)
            out[ox * c] = tvmp_out_s8(depthwise_window(p, t->wp[0] + ky0, wd, rows, kw, start),
                                      q, d->out_offset, d->lo, d->hi);
        }
        --ox;
        continue;
      }
      const int32_t kx0 = ix < 0 ? -ix : 0, kx1 = wd - ix < kw ? wd - ix : kw;
      if ((kx0 > 0 && kx1 < kw) || last + ix + kx0 + reach > (h - iy - ky0) * wd) {
        acc = depthwise_clipped(d->plane, t->wk, h, wd, iy, ix, kh, kw, d->in_offset, bias);
      } else {
        const int32_t cls = depthwise_class(kx0, kx1, kw);
        int32_t start = bias;
        for (int32_t ky = ky0; ky < ky1; ++ky) start += t->sum[cls][ky] * d->in_offset;
        acc = depthwise_window(base + ix + kx0, t->wp[cls] + ky0, wd, rows, kw, start);
      }
      out[ox * c] = tvmp_out_s8(acc, q, d->out_offset, d->lo, d->hi);
    }
  }
}

/* Small images (the padded plane within TVMP_DW_PADDED_MAX bytes): the channel is copied
 * into a plane on the stack with the padding around it (the input's zero point, whose sum
 * with the input offset is 0), so every window is whole and runs the same SIMD window. */

typedef struct {
  const int8_t* padded;
  int8_t* y;
  const uint32_t (*wp)[4];
  int32_t pw, c, oh, ow, y_row, stride_h, stride_w, start, out_offset, lo, hi;
  tvmp_rq_t q;
} padded_channel_t;

/* one channel; kh, kw and fast constants where inlined */
static inline __attribute__((always_inline)) void depthwise_padded_channel(
    const padded_channel_t* a, int32_t kh, int32_t kw, int32_t fast) {
  const int8_t* padded = a->padded;
  const uint32_t (*wp)[4] = a->wp;
  const int32_t pw = a->pw, c = a->c, oh = a->oh, ow = a->ow, stride_h = a->stride_h;
  const int32_t stride_w = a->stride_w, start = a->start, out_offset = a->out_offset;
  const int32_t lo = a->lo, hi = a->hi;
  const tvmp_rq_t q = a->q;
  for (int32_t oy = 0; oy < oh; ++oy) {
    const int8_t* p = padded + oy * stride_h * pw;
    int8_t* out = a->y + oy * a->y_row * c;
    int32_t ox = 0;
    if (kh == 3 && kw == 3 && stride_w == 1) {
      for (; ox + 2 <= ow; ox += 2, p += 2, out += 2 * c) {
        int32_t a0, a1;
        depthwise_window_3x3_pair(p, wp, pw, start, &a0, &a1);
        out[0] = tvmp_requantize(a0, q, fast, out_offset, lo, hi);
        out[c] = tvmp_requantize(a1, q, fast, out_offset, lo, hi);
      }
    }
    for (; ox < ow; ++ox, p += stride_w, out += c)
      *out = tvmp_requantize(depthwise_window(p, wp, pw, kh, kw, start), q, fast, out_offset,
                             lo, hi);
  }
}

/* each kernel size and requantization its own function, whose registers hold its loop */
#define PADDED_CHANNEL(kh, kw, fast, name)                                              \
  static __attribute__((noinline)) void name(const padded_channel_t* a) {               \
    depthwise_padded_channel(a, kh, kw, fast);                                           \
  }
PADDED_CHANNEL(3, 3, 1, depthwise_padded_3x3_fast)
PADDED_CHANNEL(3, 3, 0, depthwise_padded_3x3)
PADDED_CHANNEL(5, 5, 1, depthwise_padded_5x5_fast)
PADDED_CHANNEL(5, 5, 0, depthwise_padded_5x5)
PADDED_CHANNEL(7, 7, 1, depthwise_padded_7x7_fast)
PADDED_CHANNEL(7, 7, 0, depthwise_padded_7x7)
#undef PADDED_CHANNEL

static __attribute__((noinline)) void depthwise_padded_any(const padded_channel_t* a,
                                                            int32_t kh, int32_t kw) {
  depthwise_padded_channel(a, kh, kw, a->q.fast);
}

static void depthwise_padded(const int8_t* x, const int8_t* w, const int32_t* bias,
                             const int32_t* mult, const int32_t* shift, int8_t* y, int32_t h,
                             int32_t wd, int32_t c, int32_t oh, int32_t ow, int32_t kh,
                             int32_t kw, int32_t stride_h, int32_t stride_w, int32_t pad_top,
                             int32_t pad_left, int32_t x_row, int32_t y_row, int32_t in_offset,
                             int32_t out_offset, int32_t lo, int32_t hi, int32_t fast) {
  const int32_t ph = (oh - 1) * stride_h + kh, pw = (ow - 1) * stride_w + kw;
  int8_t padded[TVMP_DW_PADDED_MAX];  /* ph * pw bytes, and 8 a window may read past them */
  fill_bytes(padded, (int8_t)(-in_offset), ph * pw + 8);
  /* the image rows and columns the windows reach */
  const int32_t r0 = pad_top, r1 = pad_top + h < ph ? pad_top + h : ph;
  const int32_t q0 = pad_left, q1 = pad_left + wd < pw ? pad_left + wd : pw;
  depthwise_weights_t t;
  for (int32_t ch = 0; ch < c; ++ch) {
    for (int32_t r = r0; r < r1; ++r) {  /* before y overwrites the channel */
      const int8_t* src = x + ((r - pad_top) * x_row - pad_left) * c + ch;
      for (int32_t qx = q0; qx < q1; ++qx) padded[r * pw + qx] = src[qx * c];
    }
    depthwise_tables(&t, w + ch, c, kh, kw, 0);
    int32_t start = bias[ch];
    for (int32_t ky = 0; ky < kh; ++ky) start += t.sum[0][ky] * in_offset;
    const tvmp_rq_t q = tvmp_rq(mult[ch], shift[ch], fast);
    const padded_channel_t a = {padded, y + ch, t.wp[0], pw, c, oh, ow, y_row, stride_h,
                                stride_w, start, out_offset, lo, hi, q};
    if (kh == 3 && kw == 3)
      (fast ? depthwise_padded_3x3_fast : depthwise_padded_3x3)(&a);
    else if (kh == 5 && kw == 5)
      (fast ? depthwise_padded_5x5_fast : depthwise_padded_5x5)(&a);
    else if (kh == 7 && kw == 7)
      (fast ? depthwise_padded_7x7_fast : depthwise_padded_7x7)(&a);
    else
      depthwise_padded_any(&a, kh, kw);
  }
}

void tvmp_depthwise_s8(const int8_t* x, const int8_t* w, const int32_t* bias,
                       const int32_t* mult, const int32_t* shift, int8_t* y, int8_t* plane,
                       int32_t h, int32_t wd, int32_t c, int32_t oh, int32_t ow, int32_t kh,
                       int32_t kw, int32_t stride_h, int32_t stride_w, int32_t pad_top,
                       int32_t pad_left, int32_t x_row, int32_t y_row, int32_t in_offset,
                       int32_t out_offset, int32_t lo, int32_t hi, int32_t fast) {
  depthwise_t d = {plane, y, h, wd, c, oh, ow, y_row, kh, kw, stride_h, stride_w, pad_top,
                   pad_left, 0, 0, in_offset, out_offset, lo, hi};
  const int simd = (kw == 3 || kw == 5 || kw == 7) && kh <= DW_MAX_K;
  const int32_t padded = ((oh - 1) * stride_h + kh) * ((ow - 1) * stride_w + kw) + 8;
  if (simd && padded <= TVMP_DW_PADDED_MAX) {
    depthwise_padded(x, w, bias, mult, shift, y, h, wd, c, oh, ow, kh, kw, stride_h, stride_w,
                     pad_top, pad_left, x_row, y_row, in_offset, out_offset, lo, hi, fast);
    return;
  }
  /* columns of outputs whose window is not cut horizontally */
  d.x0 = (pad_left + stride_w - 1) / stride_w;
  d.x1 = uncut_end(wd - kw + pad_left, stride_w);
  d.x1 = d.x1 < ow ? d.x1 : ow;
  if (d.x1 < d.x0) d.x1 = d.x0;
  /* the deepest horizontal cut of any window (its class tables are built) */
  int32_t right = (ow - 1) * stride_w - pad_left + kw - wd;
  int32_t cut = pad_left > right ? pad_left : right;
  cut = cut < 0 ? 0 : cut > kw - 1 ? kw - 1 : cut;
  depthwise_weights_t t;  /* 1.9 KB of the stack region, whose high-water mark is measured */
  for (int32_t ch = 0; ch < c; ++ch) {
    for (int32_t r = 0; r < h; ++r)  /* before y overwrites it */
      for (int32_t q = 0; q < wd; ++q) plane[r * wd + q] = x[(r * x_row + q) * c + ch];
    const tvmp_rq_t q = tvmp_rq(mult[ch], shift[ch], fast);
    if (!simd) {
      for (int32_t i = 0; i < kh * kw; ++i) t.wk[i] = w[i * c + ch];
      for (int32_t oy = 0; oy < oh; ++oy)
        for (int32_t ox = 0; ox < ow; ++ox)
          y[(oy * y_row + ox) * c + ch] = tvmp_out_s8(
              depthwise_clipped(plane, t.wk, h, wd, oy * stride_h - pad_top,
                                ox * stride_w - pad_left, kh, kw, in_offset, bias[ch]),
              q, out_offset, lo, hi);
      continue;
    }
    depthwise_tables(&t, w + ch, c, kh, kw, cut);
    if (kh == 3 && kw == 3)
      depthwise_channel(&d, ch, &t, bias[ch], q, 3, 3);
    else if (kh == 5 && kw == 5)
      depthwise_channel(&d, ch, &t, bias[ch], q, 5, 5);
    else if (kh == 7 && kw == 7)
      depthwise_channel(&d, ch, &t, bias[ch], q, 7, 7);
    else
      depthwise_channel(&d, ch, &t, bias[ch], q, kh, kw);
  }
}

/* Convolutions by columns (CMSIS-NN's im2col, two output positions at a time): each
 * position's window (kh x kw x cin taps, in the weights' order) is widened to int16 with
 * the input offset added, so out-of-image taps are zeros, then two weight rows run against
 * both columns (2x2 register block, SMLAD on int16 pairs). The columns live on the stack:
 * layers with more than TVMP_COL_MAX taps take tvmp_conv_s8's window-row path below. */
#define CONV_RUN 32  /* output channels summed before they are requantized */
#ifndef TVMP_COL_MAX
#define TVMP_COL_MAX 640
#endif

static inline uint32_t load_pair(const int16_t* p) {
  uint32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

static inline void store_pair(int16_t* p, uint32_t v) { __builtin_memcpy(p, &v, 4); }

/* x[k] + offset as int16, each 4 bytes [b0 b1 b2 b3] stored as the pairs [b0 b2] [b1 b3]
 * (the order SXTB16 widens the weights in), the last n % 4 in order. Each 4 bytes are read
 * before their 8 are written, so x may lie inside col from byte n on (im2col). */
static inline void widen(const int8_t* x, int16_t* col, int32_t n, int32_t offset) {
  const uint32_t off = tvmp_pair(offset);
  int32_t k = 0;
  for (; k + 4 <= n; k += 4) {
    uint32_t v = tvmp_load32(x + k);
    uint32_t e = tvmp_sxtab16(off, v), o = tvmp_sxtab16_ror8(off, v);
    store_pair(col + k, e);
    store_pair(col + k + 2, o);
  }
  for (; k < n; ++k) col[k] = (int16_t)(x[k] + offset);
}

typedef struct {
  const int8_t* x;
  const float* xf;  /* instead of x: a float image, quantized as its windows are gathered */
  float scale, low, high;  /* its quantization: scale, and the int8 range minus zp */
  int32_t h, wd, x_row, cin, kh, kw, taps, in_offset;
} conv_window_t;

/* n bytes of x at `at`, or of the float image quantized as TFLite's QUANTIZE does: divided
 * in float32, rounded half away from zero, clamped to the int8 range, NaN to the zero point
 * (kernels/ops.py quantize, whose bytes the TVM-generated C computes) */
static void gather(const conv_window_t* g, int8_t* dst, int32_t at, int32_t n) {
  if (g->xf == 0) {
    copy_bytes(dst, g->x + at, n);
    return;
  }
  const float* src = g->xf + at;
  const float scale = g->scale, low = g->low, high = g->high;  /* not re-read per byte */
  const int32_t zero_point = -g->in_offset;
  for (int32_t k = 0; k < n; ++k) {
    const float q = src[k] / scale;
    dst[k] = (int8_t)(q == q ? (int32_t)fminf(fmaxf(roundf(q), low), high) + zero_point
                             : zero_point);
  }
}

/* the window at input row iy, column ix into col (2 * taps bytes): its bytes are gathered
 * into the upper half (the input's zero point where the window leaves the image), then
 * widened into the whole */
static void im2col(const conv_window_t* g, int32_t iy, int32_t ix, int16_t* col) {
  const int32_t row = g->kw * g->cin;
  const int8_t zp = (int8_t)(-g->in_offset);
  int8_t* raw = (int8_t*)col + g->taps;
  const int32_t kx0 = ix < 0 ? -ix : 0, kx1 = g->wd - ix < g->kw ? g->wd - ix : g->kw;
  for (int32_t ky = 0; ky < g->kh; ++ky, raw += row) {
    if (iy + ky < 0 || iy + ky >= g->h || kx1 <= kx0) {
      fill_bytes(raw, zp, row);
      continue;
    }
    fill_bytes(raw, zp, kx0 * g->cin);
    gather(g, raw + kx0 * g->cin, ((iy + ky) * g->x_row + ix + kx0) * g->cin,
           (kx1 - kx0) * g->cin);
    fill_bytes(raw + kx1 * g->cin, zp, (g->kw - kx1) * g->cin);
  }
  widen((int8_t*)col + g->taps, col, g->taps, g->in_offset);
}

/* sum_k c[k] * w[k] for two columns and two weight rows (2x2 register block) */
static inline void dot_columns(const int16_t* c0, const int16_t* c1, const int8_t* w0,
                               const int8_t* w1, int32_t n, int32_t* acc) {
  int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
#define DOT_COLUMNS_4                                     \
  do {                                                    \
    uint32_t wa = tvmp_load32(w0);                        \
    w0 += 4;                                              \
    uint32_t we = tvmp_sxtb16(wa), wo = tvmp_sxtb16_ror8(wa); \
    uint32_t xe = load_pair(c0), xo = load_pair(c0 + 2);  \
    a00 = tvmp_smlad(xe, we, a00);                        \
    a00 = tvmp_smlad(xo, wo, a00);                        \
    uint32_t ye = load_pair(c1), yo = load_pair(c1 + 2);  \
    c0 += 4, c1 += 4;                                     \
    a10 = tvmp_smlad(ye, we, a10);                        \
    a10 = tvmp_smlad(yo, wo, a10);                        \
    wa = tvmp_load32(w1);                                 \
    w1 += 4;                                              \
    we = tvmp_sxtb16(wa), wo = tvmp_sxtb16_ror8(wa);      \
    a01 = tvmp_smlad(xe, we, a01);                        \
    a01 = tvmp_smlad(xo, wo, a01);                        \
    a11 = tvmp_smlad(ye, we, a11);                        \
    a11 = tvmp_smlad(yo, wo, a11);                        \
  } while (0)
  const int8_t* end = w0 + (n & ~7);
  while (w0 != end) {
    DOT_COLUMNS_4;
    DOT_COLUMNS_4;
  }
  if (n & 4) DOT_COLUMNS_4;
#undef DOT_COLUMNS_4
  for (int32_t k = 0; k < (n & 3); ++k) {
    a00 += c0[k] * w0[k];
    a01 += c0[k] * w1[k];
    a10 += c1[k] * w0[k];
    a11 += c1[k] * w1[k];
  }
  acc[0] = a00, acc[1] = a01, acc[2] = a10, acc[3] = a11;
}

typedef struct {
  const int8_t* w;
  const int32_t *bias, *mult, *shift;
  int8_t* y;
  int32_t oh, ow, y_row, cout, stride_h, stride_w, pad_top, pad_left, out_offset, lo, hi, fast;
} conv_output_t;

/* every output channel of one column (a 1x2 register block: two weight rows) */
static __attribute__((noinline)) void conv_one_column(const int16_t* col,
                                                       const conv_output_t* a, int32_t taps,
                                                       int8_t* out) {
  for (int32_t o = 0; o < a->cout; o += 2) {
    const int pair = o + 1 < a->cout;
    const int8_t* w0 = a->w + o * taps;
    const int8_t* w1 = pair ? w0 + taps : w0;
    int32_t a0 = a->bias[o], a1 = pair ? a->bias[o + 1] : 0;
    const int16_t* c = col;
    int32_t k = 0;
    for (; k + 4 <= taps; k += 4, c += 4) {
      const uint32_t xe = load_pair(c), xo = load_pair(c + 2);
      const uint32_t wa = tvmp_load32(w0 + k), wb = tvmp_load32(w1 + k);
      a0 = tvmp_smlad(xe, tvmp_sxtb16(wa), a0);
      a0 = tvmp_smlad(xo, tvmp_sxtb16_ror8(wa), a0);
      a1 = tvmp_smlad(xe, tvmp_sxtb16(wb), a1);
      a1 = tvmp_smlad(xo, tvmp_sxtb16_ror8(wb), a1);
    }
    for (int32_t j = 0; j < (taps & 3); ++j) {
      a0 += c[j] * w0[k + j];
      a1 += c[j] * w1[k + j];
    }
    out[o] = tvmp_out_s8(a0, tvmp_rq(a->mult[o], a->shift[o], a->fast), a->out_offset, a->lo,
                         a->hi);
    if (pair)
      out[o + 1] = tvmp_out_s8(a1, tvmp_rq(a->mult[o + 1], a->shift[o + 1], a->fast),
                               a->out_offset, a->lo, a->hi);
  }
}

/* the layer by columns; taps <= TVMP_COL_MAX, a constant where inlined */
static inline __attribute__((always_inline)) void conv_columns_n(
    const conv_window_t* g, const conv_output_t* a, int32_t taps) {
  const int8_t* w = a->w;
  const int32_t *bias = a->bias, *mult = a->mult, *shift = a->shift;
  int8_t* y = a->y;
  const int32_t oh = a->oh, ow = a->ow, y_row = a->y_row, cout = a->cout;
  const int32_t stride_h = a->stride_h;
  const int32_t stride_w = a->stride_w, pad_top = a->pad_top, pad_left = a->pad_left;
  const int32_t out_offset = a->out_offset, lo = a->lo, hi = a->hi, fast = a->fast;
  /* two columns of int16, each at a 4-byte boundary (at least the unrolled sizes' own, for
   * builds with a smaller TVMP_COL_MAX, where they are never called) */
  uint32_t buffer[TVMP_COL_MAX > 64 ? TVMP_COL_MAX : 64];
  const int32_t step = (taps + 1) & ~1;
  /* every window one pixel inside the image (a PAD of the bottom or right folded into a
   * 1x1 convolution leaves outputs beyond it) */
  const int pointwise = g->kh == 1 && g->kw == 1 && stride_h == 1 && stride_w == 1 &&
                        pad_top == 0 && pad_left == 0 && oh <= g->h && ow <= g->wd &&
                        g->xf == 0;
  int16_t* cols[2] = {(int16_t*)buffer, (int16_t*)buffer + step};
  const int32_t positions = oh * ow;
  int32_t oy = 0, ox = 0;
  for (int32_t p = 0; p < positions; p += 2) {
    const int32_t n = p + 1 < positions ? 2 : 1;
    int8_t* outs[2];
    for (int32_t j = 0; j < n; ++j) {
      if (pointwise)
        widen(g->x + (oy * g->x_row + ox) * g->cin, cols[j], taps, g->in_offset);
      else
        im2col(g, oy * stride_h - pad_top, ox * stride_w - pad_left, cols[j]);
      outs[j] = y + (oy * y_row + ox) * cout;
      if (++ox == ow) ox = 0, ++oy;
    }
    if (n == 1) {  /* an odd last position (a fused block's one-pixel tiles) */
      conv_one_column(cols[0], a, taps, outs[0]);
      continue;
    }
    const int16_t* c1 = cols[1];
    int8_t *out = outs[0], *out1 = outs[1];
    /* the sums of a run of channels first, then their requantization, whose parameters
     * then stay in registers */
    for (int32_t run = 0; run < cout; run += CONV_RUN) {
      const int32_t end = run + CONV_RUN < cout ? run + CONV_RUN : cout;
      int32_t sums[2][CONV_RUN + 1];
      for (int32_t o = run; o < end; o += 2) {
        const int8_t* w0 = w + o * taps;
        const int pair = o + 1 < end;  /* an odd last channel runs as its own pair */
        int32_t acc[4] = {bias[o], pair ? bias[o + 1] : 0, bias[o], pair ? bias[o + 1] : 0};
        dot_columns(cols[0], c1, w0, pair ? w0 + taps : w0, taps, acc);
        sums[0][o - run] = acc[0], sums[0][o - run + 1] = acc[1];
        sums[1][o - run] = acc[2], sums[1][o - run + 1] = acc[3];
      }
      if (fast && n == 2) {  /* the common case, its branches taken out of the loop */
        for (int32_t o = run; o < end; ++o) {
          const tvmp_rq_t q = tvmp_rq(mult[o], shift[o], 1);
          out[o] = tvmp_requantize(sums[0][o - run], q, 1, out_offset, lo, hi);
          out1[o] = tvmp_requantize(sums[1][o - run], q, 1, out_offset, lo, hi);
        }
        continue;
      }
      for (int32_t o = run; o < end; ++o) {
        const tvmp_rq_t q = tvmp_rq(mult[o], shift[o], fast);
        out[o] = tvmp_out_s8(sums[0][o - run], q, out_offset, lo, hi);
        if (n == 2) out1[o] = tvmp_out_s8(sums[1][o - run], q, out_offset, lo, hi);
      }
    }
  }
}

/* small windows (pointwise layers with few input channels, 3x3 over 3 channels) unrolled whole */
#define CONV_COLUMNS(n)                                                                   \
  static __attribute__((noinline)) void conv_columns_##n(const conv_window_t* g,          \
                                                         const conv_output_t* a) {        \
    conv_columns_n(g, a, n);                                                              \
  }
CONV_COLUMNS(8)
CONV_COLUMNS(16)
CONV_COLUMNS(24)
CONV_COLUMNS(27)
CONV_COLUMNS(32)
CONV_COLUMNS(48)
CONV_COLUMNS(64)
#undef CONV_COLUMNS

static void conv_columns(const conv_window_t* g, const conv_output_t* a) {
  switch (g->taps) {
    case 8: conv_columns_8(g, a); break;
    case 16: conv_columns_16(g, a); break;
    case 24: conv_columns_24(g, a); break;
    case 27: conv_columns_27(g, a); break;
    case 32: conv_columns_32(g, a); break;
    case 48: conv_columns_48(g, a); break;
    case 64: conv_columns_64(g, a); break;
    default: conv_columns_n(g, a, g->taps);
  }
}

/* one output of a convolution whose window may be cut by the image's sides: the rows and
 * columns of taps inside, each row's taps (kx..kx1 by all channels) contiguous in x and w */
static int32_t conv_clipped(const int8_t* x, const int8_t* w, int32_t h, int32_t wd,
                            int32_t x_row, int32_t cin, int32_t kh, int32_t kw, int32_t iy,
                            int32_t ix, int32_t in_offset, int32_t acc) {
  const int32_t ky0 = iy < 0 ? -iy : 0, ky1 = h - iy < kh ? h - iy : kh;
  const int32_t kx0 = ix < 0 ? -ix : 0, kx1 = wd - ix < kw ? wd - ix : kw;
  const int32_t n = (kx1 - kx0) * cin;
  for (int32_t ky = ky0; ky < ky1; ++ky) {
    const int8_t* wr = w + (ky * kw + kx0) * cin;
    acc = dot_1x1(x + ((iy + ky) * x_row + ix + kx0) * cin, wr, n, acc);
    acc += weight_sum(wr, n) * in_offset;
  }
  return acc;
}

void tvmp_conv_s8(const int8_t* x, const int8_t* w, const int32_t* bias, const int32_t* mult,
                  const int32_t* shift, int8_t* y, int32_t h, int32_t wd, int32_t cin,
                  int32_t oh, int32_t ow, int32_t cout, int32_t kh, int32_t kw,
                  int32_t stride_h, int32_t stride_w, int32_t pad_top, int32_t pad_left,
                  int32_t x_row, int32_t y_row, int32_t in_offset, int32_t out_offset,
                  int32_t lo, int32_t hi, int32_t fast) {
  const int32_t row = kw * cin, taps = kh * kw * cin;
  if (taps <= TVMP_COL_MAX) {
    const conv_window_t g = {x, 0, 1.0f, 0.0f, 0.0f, h, wd, x_row, cin, kh, kw, taps,
                             in_offset};
    const conv_output_t a = {w, bias, mult, shift, y, oh, ow, y_row, cout, stride_h, stride_w,
                             pad_top, pad_left, out_offset, lo, hi, fast};
    conv_columns(&g, &a);
    return;
  }
  /* outputs whose window lies inside the image: rows [y0, y1), columns [x0, x1) */
  const int32_t y0 = (pad_top + stride_h - 1) / stride_h, x0 = (pad_left + stride_w - 1) / stride_w;
  int32_t y1 = uncut_end(h - kh + pad_top, stride_h);
  int32_t x1 = uncut_end(wd - kw + pad_left, stride_w);
  y1 = y1 < oh ? (y1 < y0 ? y0 : y1) : oh;
  x1 = x1 < ow ? (x1 < x0 ? x0 : x1) : ow;
  for (int32_t o = 0; o < cout; o += 2) {
    const int pair = o + 1 < cout;  /* an odd last channel runs as its own pair */
    const int8_t* w0 = w + o * taps;
    const int8_t* w1 = pair ? w0 + taps : w0;
    const int32_t b0 = bias[o], b1 = pair ? bias[o + 1] : b0;
    const int32_t s0 = with_offset(b0, w0, taps, in_offset);
    const int32_t s1 = with_offset(b1, w1, taps, in_offset);
    const tvmp_rq_t q0 = tvmp_rq(mult[o], shift[o], fast);
    const tvmp_rq_t q1 = pair ? tvmp_rq(mult[o + 1], shift[o + 1], fast) : q0;
    for (int32_t oy = 0; oy < oh; ++oy) {
      const int32_t iy = oy * stride_h - pad_top;
      int8_t* out = y + oy * y_row * cout + o;
      const int inside = oy >= y0 && oy < y1;
      for (int32_t ox = 0; ox < ow;) {
        const int32_t ix = ox * stride_w - pad_left;
        if (inside && ox >= x0 && ox + 1 < x1) {  /* two uncut windows, two channels */
          int32_t acc[4] = {s0, s1, s0, s1};
          const int8_t* xa = x + (iy * x_row + ix) * cin;
          const int8_t* xb = xa + stride_w * cin;
          for (int32_t ky = 0; ky < kh; ++ky)
            dot_2x2(xa + ky * x_row * cin, xb + ky * x_row * cin, w0 + ky * row, w1 + ky * row,
                    row, acc);
          out[ox * cout] = tvmp_out_s8(acc[0], q0, out_offset, lo, hi);
          out[(ox + 1) * cout] = tvmp_out_s8(acc[2], q0, out_offset, lo, hi);
          if (pair) {
            out[ox * cout + 1] = tvmp_out_s8(acc[1], q1, out_offset, lo, hi);
            out[(ox + 1) * cout + 1] = tvmp_out_s8(acc[3], q1, out_offset, lo, hi);
          }
          ox += 2;
          continue;
        }
        int32_t a0, a1;
        if (inside && ox >= x0 && ox < x1) {
          const int8_t* xa = x + (iy * x_row + ix) * cin;
          a0 = s0, a1 = s1;
          for (int32_t ky = 0; ky < kh; ++ky) {
            a0 = dot_1x1(xa + ky * x_row * cin, w0 + ky * row, row, a0);
            a1 = dot_1x1(xa + ky * x_row * cin, w1 + ky * row, row, a1);
          }
        } else {
          a0 = conv_clipped(x, w0, h, wd, x_row, cin, kh, kw, iy, ix, in_offset, b0);
          a1 = conv_clipped(x, w1, h, wd, x_row, cin, kh, kw, iy, ix, in_offset, b1);
        }
        out[ox * cout] = tvmp_out_s8(a0, q0, out_offset, lo, hi);
        if (pair) out[ox * cout + 1] = tvmp_out_s8(a1, q1, out_offset, lo, hi);
        ++ox;
      }
    }
  }
}

void tvmp_conv_f32_s8(const float* x, float scale, int32_t zero_point, const int8_t* w,
                      const int32_t* bias, const int32_t* mult, const int32_t* shift, int8_t* y,
                      int32_t h, int32_t wd, int32_t cin, int32_t oh, int32_t ow, int32_t cout,
                      int32_t kh, int32_t kw, int32_t stride_h, int32_t stride_w,
                      int32_t pad_top, int32_t pad_left, int32_t x_row, int32_t y_row,
                      int32_t out_offset, int32_t lo, int32_t hi, int32_t fast) {
  const conv_window_t g = {0, x, scale, (float)(-128 - zero_point), (float)(127 - zero_point),
                           h, wd, x_row, cin, kh, kw, kh * kw * cin, -zero_point};
  const conv_output_t a = {w, bias, mult, shift, y, oh, ow, y_row, cout, stride_h, stride_w,
                           pad_top, pad_left, out_offset, lo, hi, fast};
  conv_columns(&g, &a);
}

void tvmp_depthwise_nhwc_s8(const int8_t* x, const int8_t* w, const int32_t* bias,
                            const int32_t* mult, const int32_t* shift, int8_t* y, int32_t h,
                            int32_t wd, int32_t c, int32_t oh, int32_t ow, int32_t kh,
                            int32_t kw, int32_t stride_h, int32_t stride_w, int32_t pad_top,
                            int32_t pad_left, int32_t x_row, int32_t y_row, int32_t in_offset,
                            int32_t out_offset, int32_t lo, int32_t hi, int32_t fast) {
  const uint32_t offsets = tvmp_pair(in_offset);  /* x + offset: taps outside add nothing */
  for (int32_t oy = 0; oy < oh; ++oy) {
    const int32_t iy = oy * stride_h - pad_top;
    const int32_t ky0 = iy < 0 ? -iy : 0, ky1 = h - iy < kh ? h - iy : kh;
    for (int32_t ox = 0; ox < ow; ++ox) {
      const int32_t ix = ox * stride_w - pad_left;
      const int32_t kx0 = ix < 0 ? -ix : 0, kx1 = wd - ix < kw ? wd - ix : kw;
      const int8_t* first = x + ((iy + ky0) * x_row + ix + kx0) * c;
      const int8_t* taps = w + (ky0 * kw + kx0) * c;
      int8_t* out = y + (oy * y_row + ox) * c;
      int32_t ch = 0;
      for (; ch + 4 <= c; ch += 4) {
        int32_t a0 = bias[ch], a1 = bias[ch + 1], a2 = bias[ch + 2], a3 = bias[ch + 3];
        for (int32_t ky = ky0; ky < ky1; ++ky) {
          const int8_t* xp = first + (ky - ky0) * x_row * c + ch;
          const int8_t* wp = taps + (ky - ky0) * kw * c + ch;
          for (int32_t kx = kx0; kx < kx1; ++kx, xp += c, wp += c) {
            const uint32_t xv = tvmp_load32(xp), wv = tvmp_load32(wp);
            const uint32_t xe = tvmp_sxtab16(offsets, xv), xo = tvmp_sxtab16_ror8(offsets, xv);
            const uint32_t we = tvmp_sxtb16(wv), wo = tvmp_sxtb16_ror8(wv);
            a0 = tvmp_smlabb(xe, we, a0);
            a2 = tvmp_smlatt(xe, we, a2);
            a1 = tvmp_smlabb(xo, wo, a1);
            a3 = tvmp_smlatt(xo, wo, a3);
          }
        }
        out[ch] = tvmp_out_s8(a0, tvmp_rq(mult[ch], shift[ch], fast), out_offset, lo, hi);
        out[ch + 1] = tvmp_out_s8(a1, tvmp_rq(mult[ch + 1], shift[ch + 1], fast), out_offset,
                                  lo, hi);
        out[ch + 2] = tvmp_out_s8(a2, tvmp_rq(mult[ch + 2], shift[ch + 2], fast), out_offset,
                                  lo, hi);
        out[ch + 3] = tvmp_out_s8(a3, tvmp_rq(mult[ch + 3], shift[ch + 3], fast), out_offset,
                                  lo, hi);
      }
      for (; ch < c; ++ch) {
        int32_t acc = bias[ch];
        for (int32_t ky = ky0; ky < ky1; ++ky)
          for (int32_t kx = kx0; kx < kx1; ++kx)
            acc += (first[((ky - ky0) * x_row + kx - kx0) * c + ch] + in_offset) *
                   taps[((ky - ky0) * kw + kx - kx0) * c + ch];
        out[ch] = tvmp_out_s8(acc, tvmp_rq(mult[ch], shift[ch], fast), out_offset, lo, hi);
      }
    }
  }
}
