/* A fused block (tvm_patch/schedule/regions.py's Stage) run on the microcontroller by the
 * hand-written kernels of tvmp_nn.c: the block is a table (tvm_patch/passes/c_block.py
 * writes it), tvmp_block_run walks its tiles. Per tile, every operator computes the rows and
 * columns of its output region that lie inside the image (and, along a cached axis, that
 * the previous tile did not compute) by one kernel call on that rectangle, reading its
 * inputs where they live: the block's input tensor, or tile buffers in the workspace at
 * the offsets the memory plan gave the lowered loop nest. Bytes, buffers and the order of
 * tiles are the loop nest's (passes/fuse.py), so the host's run of the same block checks
 * every firmware run of it. */
#ifndef TVMP_BLOCK_H
#define TVMP_BLOCK_H
#include <stdint.h>

/* one axis of a tensor's region per tile: tile t covers rows
 * [t * tile * stride - lo, t * tile * stride - lo + extent) (regions.py's Span) */
typedef struct {
  int32_t stride, lo, extent;
} tvmp_span_t;

enum {
  TVMP_BLOCK_CONV,       /* tvmp_conv_s8 (tvmp_conv1x1_s8 when `wide`) */
  TVMP_BLOCK_CONV_F32,   /* a QUANTIZE of the float block input, then a conv: tvmp_conv_f32_s8 */
  TVMP_BLOCK_DEPTHWISE,  /* tvmp_depthwise_s8 in bands whose padded plane fits the stack */
  TVMP_BLOCK_ADD         /* TFLite's int8 ADD, tvmp_add_s8 */
};

typedef struct {
  int32_t kind, wide;
  int32_t src[2];           /* operands: -1 the block's input tensor, k >= 0 op k's output */
  int32_t h, w, c;          /* the output image */
  tvmp_span_t region[2];    /* the output's region per tile, along H and W */
  int32_t offset;           /* its tile buffer in the workspace; -1: the block's output tensor */
  int32_t kept;             /* region rows along the cached axis that the next tile keeps */
  int32_t kh, kw, stride_h, stride_w, pad_top, pad_left;
  int32_t params[4];        /* parameter indices of weights, bias, multipliers, shifts */
  int32_t in_offset, out_offset, lo, hi, fast;
  float scale;              /* TVMP_BLOCK_CONV_F32: the QUANTIZE's scale */
  int32_t add[8];           /* TVMP_BLOCK_ADD: offsets of a, b; multiplier, shift of a, b, sum */
} tvmp_block_op_t;

typedef struct {
  const tvmp_block_op_t* ops;
  int32_t n_ops;
  int32_t grid[2], tile[2];  /* tiles along H and W; output rows and columns per tile */
  int32_t cached;            /* the axis whose kept rows move between tiles, or -1 */
  int32_t first_tile;        /* along the cached axis, where the run starts (<= 0) */
  int32_t in_h, in_w, in_c;  /* the block's input tensor */
  int32_t input, output, workspace;  /* parameter indices */
} tvmp_block_t;

void tvmp_block_run(const tvmp_block_t* b, void* const* params);

/* TFLite's int8 ADD over rows x cols pixels of c channels, each operand and the output
 * with its own row pitch (pixels) */
void tvmp_add_s8(const int8_t* a, int32_t a_row, const int8_t* b, int32_t b_row, int8_t* y,
                 int32_t y_row, int32_t rows, int32_t cols, int32_t c, const int32_t* add,
                 int32_t out_offset, int32_t lo, int32_t hi);

#endif
