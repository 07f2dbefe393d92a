/* Fused blocks by the hand-written kernels (see tvmp_block.h). */
#include "tvmp_block.h"

#include <string.h>

#include "tvmp_nn.h"

/* a depthwise rectangle of fewer outputs per channel runs straight from NHWC: each plane
 * would cost its setup (copy, padding, tap tables) for few windows */
#ifndef TVMP_DW_NHWC_BELOW
#define TVMP_DW_NHWC_BELOW 16
#endif

/* where a tensor's pixels live during a tile: global pixel (r, q) at
 * base + ((r - row0) * pitch + q - col0) * channels */
typedef struct {
  uint8_t* base;
  int32_t row0, col0, pitch;
} place_t;

static inline int32_t origin(tvmp_span_t s, int32_t t, int32_t tile) {
  return t * tile * s.stride - s.lo;
}

static place_t place_of(const tvmp_block_t* b, int32_t k, const int32_t* t, void* const* params) {
  place_t p;
  if (k < 0) {
    p.base = (uint8_t*)params[b->input];
    p.row0 = p.col0 = 0;
    p.pitch = b->in_w;
    return p;
  }
  const tvmp_block_op_t* op = &b->ops[k];
  if (op->offset < 0) {
    p.base = (uint8_t*)params[b->output];
    p.row0 = p.col0 = 0;
    p.pitch = op->w;
    return p;
  }
  p.base = (uint8_t*)params[b->workspace] + op->offset;
  p.row0 = origin(op->region[0], t[0], b->tile[0]);
  p.col0 = origin(op->region[1], t[1], b->tile[1]);
  p.pitch = op->region[1].extent;
  return p;
}

static inline int8_t* at(place_t p, int32_t r, int32_t q, int32_t channels, int32_t bytes) {
  return (int8_t*)(p.base + ((r - p.row0) * p.pitch + q - p.col0) * channels * bytes);
}

/* the output rows [y[0], y[1]) and columns [x[0], x[1]) op computes at tile t: its region's
 * rows inside the image, after a run's first tile along the cached axis only those the
 * previous tile did not (0: none) */
static int rectangle(const tvmp_block_t* b, const tvmp_block_op_t* op, const int32_t* t,
                     int32_t* y, int32_t* x) {
  int32_t* r[2] = {y, x};
  for (int32_t ax = 0; ax < 2; ++ax) {
    const tvmp_span_t s = op->region[ax];
    const int32_t size = ax == 0 ? op->h : op->w, org = origin(s, t[ax], b->tile[ax]);
    int32_t first = -org < 0 ? 0 : -org > s.extent ? s.extent : -org;
    int32_t end = size - org < s.extent ? size - org : s.extent;
    if (ax == b->cached && t[ax] != b->first_tile && first < op->kept) first = op->kept;
    if (end <= first) return 0;
    r[ax][0] = org + first, r[ax][1] = org + end;
  }
  return 1;
}

/* the input rows a window of k rows, stride s and padding pad reads for outputs [o0, o1)
 * of an image of n rows: from *start, *size of them, *before rows of padding first */
static void window(int32_t o0, int32_t o1, int32_t k, int32_t s, int32_t pad, int32_t n,
                   int32_t* start, int32_t* size, int32_t* before) {
  const int32_t first = o0 * s - pad, end = (o1 - 1) * s - pad + k;
  const int32_t a = first < 0 ? 0 : first, e = end < n ? end : n;
  *start = a, *size = e > a ? e - a : 0, *before = a - first;
}

static void windowed(const tvmp_block_t* b, const tvmp_block_op_t* op, const int32_t* t,
                     void* const* params, const int32_t* y, const int32_t* x) {
  const tvmp_block_op_t* src = op->src[0] < 0 ? 0 : &b->ops[op->src[0]];
  const int32_t in_h = src ? src->h : b->in_h, in_w = src ? src->w : b->in_w;
  const int32_t cin = src ? src->c : b->in_c;
  const place_t in = place_of(b, op->src[0], t, params);
  const place_t out = place_of(b, (int32_t)(op - b->ops), t, params);
  const int8_t* w = (const int8_t*)params[op->params[0]];
  const int32_t* bias = (const int32_t*)params[op->params[1]];
  const int32_t* mult = (const int32_t*)params[op->params[2]];
  const int32_t* shift = (const int32_t*)params[op->params[3]];
  if (op->kind == TVMP_BLOCK_DEPTHWISE && (y[1] - y[0]) * (x[1] - x[0]) < TVMP_DW_NHWC_BELOW) {
    int32_t r, h, top, q, wd, left;
    window(y[0], y[1], op->kh, op->stride_h, op->pad_top, in_h, &r, &h, &top);
    window(x[0], x[1], op->kw, op->stride_w, op->pad_left, in_w, &q, &wd, &left);
    int8_t* dst = at(out, y[0], x[0], op->c, 1);
    tvmp_depthwise_nhwc_s8(at(in, r, q, cin, 1), w, bias, mult, shift, dst,
                           h, wd, cin, y[1] - y[0], x[1] - x[0], op->kh, op->kw, op->stride_h,
                           op->stride_w, top, left, in.pitch, out.pitch, op->in_offset,
                           op->out_offset, op->lo, op->hi, op->fast);
    return;
  }
  if (op->kind == TVMP_BLOCK_DEPTHWISE) {  /* bands whose padded plane fits the stack */
    int32_t cols = x[1] - x[0];
    while (cols > 1 && ((cols - 1) * op->stride_w + op->kw) * op->kh + 8 > TVMP_DW_PADDED_MAX)
      cols = (cols + 1) / 2;
    const int32_t pw = (cols - 1) * op->stride_w + op->kw;
    int32_t rows = ((TVMP_DW_PADDED_MAX - 8) / pw - op->kh) / op->stride_h + 1;
    rows = rows < 1 ? 1 : rows;
    for (int32_t y0 = y[0]; y0 < y[1]; y0 += rows) {
      const int32_t y1 = y0 + rows < y[1] ? y0 + rows : y[1];
      int32_t r, h, top;
      window(y0, y1, op->kh, op->stride_h, op->pad_top, in_h, &r, &h, &top);
      for (int32_t x0 = x[0]; x0 < x[1]; x0 += cols) {
        const int32_t x1 = x0 + cols < x[1] ? x0 + cols : x[1];
        int32_t q, wd, left;
        window(x0, x1, op->kw, op->stride_w, op->pad_left, in_w, &q, &wd, &left);
        tvmp_depthwise_s8(at(in, r, q, cin, 1), w, bias, mult, shift, at(out, y0, x0, op->c, 1),
                          0, h, wd, cin, y1 - y0, x1 - x0, op->kh, op->kw, op->stride_h,
                          op->stride_w, top, left, in.pitch, out.pitch, op->in_offset,
                          op->out_offset, op->lo, op->hi, op->fast);
      }
    }
    return;
  }
  int32_t r, h, top, q, wd, left;
  window(y[0], y[1], op->kh, op->stride_h, op->pad_top, in_h, &r, &h, &top);
  window(x[0], x[1], op->kw, op->stride_w, op->pad_left, in_w, &q, &wd, &left);
  int8_t* dst = at(out, y[0], x[0], op->c, 1);
  if (op->kind == TVMP_BLOCK_CONV_F32)
    tvmp_conv_f32_s8((const float*)at(in, r, q, cin, 4), op->scale, -op->in_offset, w, bias,
                     mult, shift, dst, h, wd, cin, y[1] - y[0], x[1] - x[0], op->c, op->kh,
                     op->kw, op->stride_h, op->stride_w, top, left, in.pitch, out.pitch,
                     op->out_offset, op->lo, op->hi, op->fast);
  else if (op->wide)  /* 1x1, stride 1, no padding */
    tvmp_conv1x1_s8(at(in, r, q, cin, 1), w, bias, mult, shift, dst, y[1] - y[0], x[1] - x[0],
                    cin, op->c, in.pitch, out.pitch, op->in_offset, op->out_offset, op->lo,
                    op->hi, op->fast);
  else
    tvmp_conv_s8(at(in, r, q, cin, 1), w, bias, mult, shift, dst, h, wd, cin, y[1] - y[0],
                 x[1] - x[0], op->c, op->kh, op->kw, op->stride_h, op->stride_w, top, left,
                 in.pitch, out.pitch, op->in_offset, op->out_offset, op->lo, op->hi, op->fast);
}

/* the rows (along the cached axis) the next tile shares with this one, to the front of
 * each tile buffer that keeps them */
static void shift_kept(const tvmp_block_t* b, void* const* params) {
  for (int32_t k = 0; k < b->n_ops; ++k) {
    const tvmp_block_op_t* op = &b->ops[k];
    if (op->kept <= 0 || op->offset < 0) continue;
    uint8_t* buf = (uint8_t*)params[b->workspace] + op->offset;
    const int32_t eh = op->region[0].extent, ew = op->region[1].extent;
    const int32_t step = b->tile[b->cached] * op->region[b->cached].stride;
    if (b->cached == 0) {
      memmove(buf, buf + step * ew * op->c, (size_t)(op->kept * ew * op->c));
    } else {
      for (int32_t r = 0; r < eh; ++r)
        memmove(buf + r * ew * op->c, buf + (r * ew + step) * op->c, (size_t)(op->kept * op->c));
    }
  }
}

static void tile(const tvmp_block_t* b, const int32_t* t, void* const* params) {
  for (int32_t k = 0; k < b->n_ops; ++k) {
    const tvmp_block_op_t* op = &b->ops[k];
    int32_t y[2], x[2];
    if (!rectangle(b, op, t, y, x)) continue;
    if (op->kind != TVMP_BLOCK_ADD) {
      windowed(b, op, t, params, y, x);
      continue;
    }
    const place_t pa = place_of(b, op->src[0], t, params);
    const place_t pb = place_of(b, op->src[1], t, params);
    const place_t out = place_of(b, k, t, params);
    tvmp_add_s8(at(pa, y[0], x[0], op->c, 1), pa.pitch, at(pb, y[0], x[0], op->c, 1), pb.pitch,
                at(out, y[0], x[0], op->c, 1), out.pitch, y[1] - y[0], x[1] - x[0], op->c,
                op->add, op->out_offset, op->lo, op->hi);
  }
}

void tvmp_block_run(const tvmp_block_t* b, void* const* params) {
  /* a cached axis runs inside: its kept rows go from one tile to the next */
  const int32_t inner = b->cached == 0 ? 0 : 1, outer = 1 - inner;
  const int32_t start = b->cached >= 0 ? b->first_tile : 0;
  int32_t t[2];
  for (t[outer] = 0; t[outer] < b->grid[outer]; ++t[outer]) {
    for (t[inner] = start; t[inner] < b->grid[inner]; ++t[inner]) {
      if (b->cached >= 0 && t[inner] > start) shift_kept(b, params);
      tile(b, t, params);
    }
  }
}

void tvmp_add_s8(const int8_t* a, int32_t a_row, const int8_t* b, int32_t b_row, int8_t* y,
                 int32_t y_row, int32_t rows, int32_t cols, int32_t c, const int32_t* add,
                 int32_t out_offset, int32_t lo, int32_t hi) {
  const int32_t a_offset = add[0], b_offset = add[1];
  const tvmp_rq_t qa = tvmp_rq(add[2], add[3], 0), qb = tvmp_rq(add[4], add[5], 0);
  const tvmp_rq_t qo = tvmp_rq(add[6], add[7], 0);
  const int32_t n = cols * c;
  for (int32_t r = 0; r < rows; ++r, a += a_row * c, b += b_row * c, y += y_row * c) {
    for (int32_t i = 0; i < n; ++i) {
      const int32_t va = tvmp_rq_apply((int32_t)((uint32_t)(a[i] + a_offset) << 20), qa);
      const int32_t vb = tvmp_rq_apply((int32_t)((uint32_t)(b[i] + b_offset) << 20), qb);
      y[i] = tvmp_out_s8(va + vb, qo, out_offset, lo, hi);
    }
  }
}
